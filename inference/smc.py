"""Sequential Monte Carlo with adaptive resampling (and importance sampling as its special case).

As a Feynman–Kac model: the mutation ``M_t`` is the program's ``step`` (one token per
particle, drawn from the program's proposal), the potential ``G_t`` is the incremental weight
``p(x_t | x_<t) / q(x_t | x_<t) * exp(factors + twist_t - twist_{t-1})``, and ``R_t`` resamples
when ``ESS / N`` falls below ``ess_threshold``. After a resampling every weight is set to the
mean weight, so at the end ``log Z_hat = log mean_i exp(logw_i)`` is the usual unbiased SMC
evidence estimate (product of the mean weights at each resampling and at the end).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ppl.inference import _engine as E
from ppl.inference import resampling as R

__all__ = ["SMCState", "SMCInfo", "init", "build_kernel", "run_loop"]


class SMCState(NamedTuple):
    particles: E.Particles
    lm: E.LMState
    t: jax.Array
    ess: jax.Array  # float32[T]: ESS before each step's resampling decision
    ancestors: jax.Array  # int32[T, N]
    resampled: jax.Array  # bool[T]
    hist_tokens: jax.Array  # int32[T, N]: token slot i's sequence got at step t (-1: finished)
    hist_logw: jax.Array  # float32[T, N]: log-weights after step t
    move_acc: jax.Array  # float32[T]: acceptance rate of the moves after step t's resampling (NaN: none)


class SMCInfo(NamedTuple):
    ess: jax.Array
    resampled: jax.Array
    ancestors: jax.Array


def init(key, setup: E.Setup, params, num_particles: int) -> SMCState:
    parts, lm_state = E.init_population(key, setup, params, num_particles)
    t_max = setup.max_tokens
    return SMCState(
        parts,
        lm_state,
        jnp.zeros((), jnp.int32),
        jnp.zeros((t_max,), jnp.float32),
        jnp.broadcast_to(jnp.arange(num_particles, dtype=jnp.int32), (t_max, num_particles)),
        jnp.zeros((t_max,), bool),
        jnp.full((t_max, num_particles), -1, jnp.int32),
        jnp.zeros((t_max, num_particles), jnp.float32),
        jnp.full((t_max,), jnp.nan, jnp.float32),
    )


def build_kernel(setup: E.Setup, params, *, resampling: str = "stratified",
                 ess_threshold: float = 0.5, islands: int = 1, exchange_every: int = 0,
                 bias_fn=None, forced=None, keep_first: bool = False, ancestor_fn=None,
                 move_fn=None):
    """Returns ``step(key, state) -> (state, info)``: one token for every particle.

    Args:
        resampling: one of ``multinomial``, ``stratified``, ``systematic``, ``residual``.
        ess_threshold: resample when ``ESS < ess_threshold * N``; 0 never resamples
            (importance sampling), 1 resamples at every step (unless all weights are equal).
        islands: split the particles into this many equal groups that resample within
            themselves (each group's weights reset to the group's mean weight, so the final
            estimate is the mean of the islands' unbiased estimates). With particles sharded
            over devices, one island per device keeps resampling local.
        exchange_every: with islands, every this many steps a resampling is global instead
            (0: never).
        bias_fn: optional ``bias_fn(tokens[T], length, hidden[K, D]) -> float32[V]``: a logit bias on each
            particle's LM-token proposal, ``q'(x) ∝ q(x) exp(bias[x])``; the weight increment
            becomes ``log p(x) - log q'(x) + ...`` (learned proposals, :mod:`.vi`).
        forced: optional ``(tokens int32[N, T], upto int32[N])``: particle ``i``'s token at
            position ``l < upto[i]`` is ``tokens[i, l]`` instead of a draw, weighted as the
            proposal would weight it (conditional SMC, rejuvenation replays).
        keep_first: conditional SMC: particle 0 (the retained reference) is its own ancestor at
            every resampling and the others are drawn i.i.d. (multinomially) from the weights
            of all ``N``, which is the conditional law the particle Gibbs kernel needs.
        ancestor_fn: with ``keep_first``, ancestor sampling: ``ancestor_fn(key, particles,
            lm_state, tokens, old_length) -> int32`` draws particle 0's ancestor at each
            resampling instead of keeping 0 (``particles`` after this step's proposal,
            ``lm_state`` before its tokens are fed; see :mod:`.particle_gibbs`).
        move_fn: resample-move: ``move_fn(key, t, particles, lm_state, tokens, old_length)
            -> (particles, lm_state, tokens, old_length, accept_rate, fed)`` applied after
            every resampling (same arguments as ``ancestor_fn``; ``fed[i]``: particle ``i``'s
            LM state already includes all its tokens, so it is not advanced; see
            :mod:`.rejuvenation`).
    """
    if resampling not in R.RESAMPLERS:
        raise ValueError(f"Unknown resampling scheme {resampling!r}; choose one of {sorted(R.RESAMPLERS)}.")
    resample_fn = R.RESAMPLERS[resampling]
    islands = int(islands)
    if islands < 1:
        raise ValueError(f"islands must be >= 1, got {islands}.")

    def draw(key, logw, m):
        # Survivors keep their slots (within their island for an island draw).
        return R.stable_ancestors(resample_fn(key, logw, m))

    # The KV cache is updated in place (only the slots that changed) on one device; sharded,
    # the gather lets XLA's partitioner move rows between devices. Conditional SMC keeps the
    # reference in slot 0, so its ancestors are not stable and it gathers too.
    in_place = setup.mesh is None and not keep_first

    def step(key, state: SMCState):
        k_prop, k_res, k_anc, k_move = jax.random.split(key, 4)
        parts0 = state.particles
        bias = None if bias_fn is None else jax.vmap(bias_fn)(parts0.tokens, parts0.length,
                                                                 state.lm.hidden)
        force = None
        if forced is not None:
            f_tok, f_upto = forced
            pos = jnp.minimum(parts0.length, f_tok.shape[1] - 1)
            force = (parts0.length < f_upto, jnp.take_along_axis(f_tok, pos[:, None], 1)[:, 0])
        parts, tokens = E.propose(k_prop, setup, parts0, state.lm.logprobs, state.t,
                                  bias=bias, force=force)
        n = parts.logw.shape[0]
        ess = R.ess(parts.logw)
        all_done = jnp.all(parts.done)
        # Never resample after the last step: it only adds variance.
        do_res = (ess < ess_threshold * n) & ~all_done & (ess_threshold > 0)

        ref_anc = jnp.zeros((), jnp.int32)
        if keep_first and ancestor_fn is not None:
            ref_anc = jax.lax.cond(
                do_res, lambda: ancestor_fn(k_anc, parts, state.lm, tokens, parts0.length),
                lambda: jnp.zeros((), jnp.int32))

        # With islands, a resampling at a step that is a multiple of exchange_every is global.
        exchange = (exchange_every > 0) & ((state.t + 1) % max(exchange_every, 1) == 0)

        def take_rows(y, r):
            if islands == 1 or keep_first:
                return jnp.take(y, r, axis=0)
            return jax.lax.cond(exchange, lambda z: jnp.take(z, r, axis=0),
                                lambda z: _island_take(z, r, islands), y)

        def resample(args):
            parts, lm_state, tokens, old_len = args
            idx = draw(k_res, parts.logw, n)
            mean = E.log_mean_exp(parts.logw)
            if islands > 1:
                g = n // islands
                lw = parts.logw.reshape(islands, g)
                local = jax.vmap(lambda k, w: draw(k, w, g))(
                    jax.random.split(k_res, islands), lw)
                island_idx = (local + g * jnp.arange(islands, dtype=jnp.int32)[:, None]).reshape(n)
                island_mean = jnp.repeat(jax.vmap(E.log_mean_exp)(lw), g)
                idx = jnp.where(exchange, idx, island_idx)
                mean = jnp.where(exchange, mean, island_mean)
            if keep_first:
                idx = R.iid_multinomial(k_res, parts.logw, n).at[0].set(ref_anc)
            parts, lm_state = E.gather(setup, parts, lm_state, idx, take=take_rows)
            parts = parts._replace(logw=jnp.full_like(parts.logw, mean))
            return parts, lm_state, tokens[idx], old_len[idx], idx

        def keep(args):
            parts, lm_state, tokens, old_len = args
            return parts, lm_state, tokens, old_len, jnp.arange(n, dtype=jnp.int32)

        small_lm = state.lm._replace(cache=())
        parts, lm_state, tokens, old_len, idx = jax.lax.cond(
            do_res, resample, keep, (parts, small_lm, tokens, parts0.length))
        if in_place:
            cache = E.copy_rows_in_place(setup, state.lm.cache, idx)
        else:
            # Layer by layer, each under its own cond, outside the cond that reorders the
            # (small) particle arrays: one cond over the whole cache made XLA hold a second
            # full copy of it (the gather's output) next to the loop's own.
            rows = E.cache_rows(setup, idx)
            cache = jax.tree.map(
                lambda x: jax.lax.cond(do_res, lambda y: take_rows(y, rows), lambda y: y, x),
                state.lm.cache)
        lm_state = lm_state._replace(cache=cache)
        move_acc = jnp.full((), jnp.nan, jnp.float32)
        fed = None
        if move_fn is not None:
            parts, lm_state, tokens, old_len, move_acc, fed = jax.lax.cond(
                do_res,
                lambda a: move_fn(k_move, state.t, *a),
                lambda a: a + (jnp.full((), jnp.nan, jnp.float32), jnp.zeros((n,), bool)),
                (parts, lm_state, tokens, old_len))
        active = ~parts.done
        lm_fed = lm_state
        lm_state = E.advance_live(setup, params, lm_state, tokens, old_len, active)
        if fed is not None:
            # Moved particles come with an LM state that has already seen all their tokens
            # (the replay's); feeding their last token again is not a no-op for every LM.
            lm_state = E.select_rows(setup, fed, lm_fed, lm_state)
        t = state.t
        new = SMCState(
            parts,
            lm_state,
            t + 1,
            state.ess.at[t].set(ess),
            state.ancestors.at[t].set(idx),
            state.resampled.at[t].set(do_res),
            state.hist_tokens.at[t].set(jnp.where(parts0.done[idx], -1, tokens)),
            state.hist_logw.at[t].set(parts.logw),
            state.move_acc.at[t].set(move_acc),
        )
        return new, SMCInfo(ess, do_res, idx)

    return step


def _island_take(y, rows, islands: int):
    """``jnp.take(y, rows, axis=0)`` for island ancestors (every row's source in its own island).

    A batched gather over an ``[islands, rows per island, ...]`` view: with the particle axis
    sharded one island (or several) per device, XLA's partitioner keeps it on the device that
    holds the island, where a flat take all-gathers the whole array.
    """
    g = y.shape[0] // islands
    local = rows.reshape(islands, g) - g * jnp.arange(islands, dtype=rows.dtype)[:, None]
    yr = y.reshape((islands, g) + y.shape[1:])
    return jax.vmap(lambda a, i: jnp.take(a, i, axis=0))(yr, local).reshape(y.shape)


def run_loop(key, setup: E.Setup, params, num_particles: int, kernel_fn, init_fn=init,
             stop=None):
    """Runs ``kernel`` under ``lax.while_loop`` until every particle finished, then ``final``.

    With ``stop`` (a traced step count) the loop ends after that many steps instead and
    ``final`` is not applied: the population then targets the intermediate distribution
    ``gamma_stop`` (used by intermediate rejuvenation moves).
    """
    from ppl.inference.sharding import constrain_state

    k_init, k_loop, k_fin = jax.random.split(key, 3)
    shard = lambda s: constrain_state(s, setup.mesh, num_particles, setup.num_contexts)  # noqa: E731
    state = shard(init_fn(k_init, setup, params, num_particles))

    limit = setup.max_tokens if stop is None else stop

    def cond(s):
        return (s.t < limit) & ~jnp.all(s.particles.done)

    def body(s):
        s, info = kernel_fn(jax.random.fold_in(k_loop, s.t), s)
        s = shard(s)
        if setup.progress_fn is not None:
            jax.debug.callback(setup.report, s.t, jnp.sum(~s.particles.done), info.ess)
        return s

    state = jax.lax.while_loop(cond, body, state)
    if stop is not None:
        return state
    parts = E.finalize(k_fin, setup, state.particles)
    return state._replace(particles=parts)


def make_runner(setup: E.Setup, num_particles: int, *, resampling="stratified", ess_threshold=0.5,
                islands=1, exchange_every=0):
    """A function ``(key, params) -> SMCState`` for ``jax.jit``."""
    if num_particles % int(islands):
        raise ValueError(f"particles ({num_particles}) must be a multiple of islands ({islands}).")

    def runner(key, params):
        kernel = build_kernel(setup, params, resampling=resampling, ess_threshold=ess_threshold,
                              islands=islands, exchange_every=exchange_every)
        return run_loop(key, setup, params, num_particles, kernel)

    return runner
