"""Rejuvenation (resample-move, Gilks & Berzuini 2001) of SMC particles.

``ppl.infer(program, method="smc", rejuvenate=k)`` applies ``k`` Metropolis–Hastings moves to
every particle independently (vmapped) **after every resampling** during the sweep, and to the
final population (resampled first if its ESS is below ``ess_threshold * N``), so that copies
made by resampling diversify. ``rejuvenate_at="end"`` keeps only the final moves (cheaper).

A move after the resampling of step ``t`` targets the distribution the SMC weights track
there, ``gamma_t(x) = p(x) exp(factors(x) + twist_t(x))·1[conditions]`` over the prefixes
``x`` the program can have produced by step ``t`` (running ones of ``t + 1`` tokens, and
ones that already finished); a final move targets the posterior
``pi(x) ∝ gamma(x) = p(x) exp(factors(x))·1[conditions]`` (``final`` included). Each move:

1. draw a position ``j`` uniformly in ``{0, ..., L(x) - 1}`` (``L`` = number of tokens);
2. regenerate the suffix: keep ``x_<j``, draw ``x'_j, x'_{j+1}, ...`` from the program's own
   proposal ``q`` until the program finishes or (intermediate moves) reaches step ``t``;
3. accept ``x'`` with probability ``min(1, [W(x') / W(x)] · [L(x) / L(x')])`` where
   ``W(x) = gamma_t(x) / q(x)`` is the sequence's own importance weight.

Why this is exact: with the position as an auxiliary variable of law ``u(j | x) = 1/L(x)``,
the MH ratio on ``(x, j)`` for the independent-suffix proposal ``q(x'_{>=j} | x_<j)`` is::

    gamma(x') u(j|x') q(x_{>=j} | x_<j)       W(x')   L(x)
    ------------------------------------  =  ----- · -----
    gamma(x)  u(j|x)  q(x'_{>=j} | x_<j)      W(x)    L(x')

because ``q(x) = q(x_<j) q(x_{>=j} | x_<j)`` and the prefix factor cancels. Redrawing ``j``
each move is a Gibbs step on the auxiliary variable, so every move leaves its target
invariant. Right after a resampling the population is an equally weighted sample of
``gamma_t``; applying a ``gamma_t``-invariant kernel to each particle keeps it one, so the
weights (and ``log Z_hat``) are unchanged by the moves and the evidence estimate stays unbiased.
A moved particle carries its new twist, so the next step's increment removes the right one.

How a move is computed (static shapes, exact KV cache): the program's state at ``j`` is not
stored, so a move *replays* the sequence from the start: one IS sweep of ``N`` rows in which
row ``i``'s first ``j_i`` tokens are forced (the ``forced`` option of the SMC kernel) and the
rest drawn, stopped after step ``t`` for intermediate moves. The sweep recomputes every KV
slot it attends to, so the cache is consistent by construction; accepted rows take the
replay's LM state (cache, next-token log-probabilities), which has already seen every token. ``W(x)`` of the current particles comes from one fully forced replay before
the first move. Cost: ``k + 1`` replays of ``t + 1`` steps for ``N`` rows after a resampling
at step ``t``, i.e. up to ``O(k N T^2 / 2)`` LM work per sweep when every step resamples
(``rejuvenate_at="end"``: ``k + 1`` sweeps), plus a second copy of the KV cache.
Requirements as for particle Gibbs: only LM tokens are random, weights are deterministic in
the tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ppl.inference import engine as E
from ppl.inference import resampling as R
from ppl.inference import smc
from ppl.inference.base import RunConfig

__all__ = ["MoveInfo", "replay", "build_move", "build_intermediate_move", "rejuvenate"]


class MoveInfo(NamedTuple):
    accepted: jax.Array  # bool[N]
    position: jax.Array  # int32[N]


def replay(key, setup: E.Setup, config: RunConfig, params, tokens, upto, bias_fn=None,
           stop=None) -> tuple[E.Particles, E.KVState]:
    """One importance sweep where row ``i`` keeps ``tokens[i, :upto[i]]`` and draws the rest.

    Returns the particles (``logw`` = own weight ``log gamma(x) - log q(x)``; finished with
    ``final`` applied, or after ``stop`` steps without it) and the LM state.
    """
    kernel = smc.build_kernel(setup, config, params, R.adaptive(ess_threshold=0.0),
                              smc.ProposalHooks(bias_fn=bias_fn, forced=(tokens, upto)))
    st = smc.run_loop(key, setup, config, params, kernel, stop=stop)
    return st.particles, st.kv


def _positions(key, length):
    n = length.shape[0]
    length = jnp.maximum(length, 1)
    j = jnp.floor(jax.random.uniform(key, (n,)) * length).astype(jnp.int32)
    return jnp.minimum(j, length - 1), length


def _accept(key, own, new_logw, length, new_length):
    n = own.shape[0]
    new_len = jnp.maximum(new_length, 1)
    log_alpha = (new_logw - own) + jnp.log(length.astype(jnp.float32)) - jnp.log(
        new_len.astype(jnp.float32))
    log_alpha = jnp.where(jnp.isfinite(own), log_alpha, jnp.inf)
    return jnp.isfinite(new_logw) & (jnp.log(jax.random.uniform(key, (n,))) < log_alpha)


def _where_rows(mask, a, b):
    return jax.tree.map(lambda x, y: jnp.where(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x, y), a, b)


def _propose_move(key, setup, config, params, parts: E.Particles, own, bias_fn, stop):
    """One MH move per particle: a uniform position, a regenerated suffix, the decision.

    Returns ``(accept[N], j[N], new particles, their LM state, own weights after the move)``.
    """
    k_j, k_sweep, k_u = jax.random.split(key, 3)
    j, length = _positions(k_j, parts.length)
    new, new_kv = replay(k_sweep, setup, config, params, parts.tokens, j, bias_fn, stop)
    accept = _accept(k_u, own, new.logw, length, new.length)
    return accept, j, new, new_kv, jnp.where(accept, new.logw, own)


def build_intermediate_move(setup: E.Setup, config: RunConfig, params, num_moves: int,
                            bias_fn=None):
    """The ``move_fn`` of [build_kernel][ppl.inference.smc.build_kernel]: ``num_moves`` MH
    moves per particle targeting ``gamma_t`` right after the resampling of step ``t``.

    Returns ``(particles, kv, tokens, old_length, acceptance_rate, moved)``: a moved
    particle's LM rows are the replay's, which have already seen all its tokens (``moved``
    tells the kernel not to advance them); the others are unchanged. A moved particle keeps
    its SMC weight and carries its new twist, so the next step removes the right one.
    """

    def move_fn(key, t, parts, kv, tokens, old_len):
        k_own, k_moves = jax.random.split(key)
        stop = t + 1
        own_parts, _ = replay(k_own, setup, config, params, parts.tokens, parts.length, bias_fn,
                              stop)

        def one(carry, key):
            p, kv, moved, own = carry
            accept, _, new, new_kv, own = _propose_move(key, setup, config, params, p, own,
                                                        bias_fn, stop)
            p = _where_rows(accept, new._replace(logw=p.logw), p)
            kv = E.select_rows(setup, accept, new_kv, kv)
            return (p, kv, moved | accept, own), accept

        n = parts.logw.shape[0]
        (parts, kv, moved, _), acc = jax.lax.scan(
            one, (parts, kv, jnp.zeros((n,), bool), own_parts.logw),
            jax.random.split(k_moves, num_moves))
        return parts, kv, tokens, old_len, jnp.mean(acc.astype(jnp.float32)), moved

    return move_fn


def build_move(setup: E.Setup, config: RunConfig, params, bias_fn=None):
    """``move((parts, own_logw), key) -> ((parts, own_logw), info)``: one MH move per particle
    of a finished population (the argument order of ``lax.scan``).

    ``own_logw`` is each particle's own ``log W(x)``; ``parts.logw`` (the SMC weight) is
    carried unchanged.
    """

    def move(carry, key):
        parts, own = carry
        accept, j, new, _, own = _propose_move(key, setup, config, params, parts, own, bias_fn,
                                               None)
        moved = _where_rows(accept, new._replace(logw=parts.logw, twist=parts.twist), parts)
        return (moved, own), MoveInfo(accept, j)

    return move


def rejuvenate(key, setup: E.Setup, config: RunConfig, params, parts: E.Particles,
               num_moves: int, *, scheme: str = R.DEFAULT_SCHEME,
               ess_threshold: float = R.DEFAULT_ESS_THRESHOLD, bias_fn=None):
    """Resamples the finished population if its ESS is low, then ``num_moves`` MH moves.

    Returns ``(particles, info)`` with ``info.accepted`` of shape ``bool[num_moves, N]``.
    The log mean weight (the evidence estimate) is preserved exactly.
    """
    k_res, k_own, k_moves = jax.random.split(key, 3)
    n = parts.logw.shape[0]
    resample_fn = R.RESAMPLERS[scheme]
    do_res = (R.ess(parts.logw) < ess_threshold * n) & (ess_threshold > 0)

    def resample(p):
        idx = resample_fn(k_res, p.logw, n)
        mean = R.log_mean_exp(p.logw)
        p = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), p)
        return p._replace(logw=jnp.full_like(p.logw, mean))

    parts = jax.lax.cond(do_res, resample, lambda p: p, parts)
    full, _ = replay(k_own, setup, config, params, parts.tokens, parts.length, bias_fn)
    move = build_move(setup, config, params, bias_fn)
    (parts, _), info = jax.lax.scan(move, (parts, full.logw), jax.random.split(k_moves, num_moves))
    return parts, info
