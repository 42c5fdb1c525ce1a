"""Sequential Monte Carlo with adaptive resampling (importance sampling is its special case).

As a Feynman–Kac model: the mutation ``M_t`` is the program's ``step`` (one token per
particle, drawn from the program's proposal, optionally biased or forced by
[ProposalHooks][ppl.inference.smc.ProposalHooks]), the potential ``G_t`` is the incremental
weight ``p(x_t | x_<t) / q(x_t | x_<t) * exp(factors + twist_t - twist_{t-1})``, and ``R_t``
is a [Resampling][ppl.inference.resampling.Resampling] strategy: when ``ESS / N`` falls below
its threshold it draws ancestors (globally: [adaptive][ppl.inference.resampling.adaptive];
within islands: [islands][ppl.inference.sharding.islands]; around a retained reference:
[conditional][ppl.inference.particle_gibbs.conditional]). After a resampling every weight is
set to the (group) mean weight, so at the end ``log Z_hat = log mean_i exp(logw_i)`` is the
usual unbiased SMC evidence estimate (product of the mean weights at each resampling and at
the end). An optional ``move_fn`` rejuvenates the population after every resampling
(resample-move, [ppl.inference.rejuvenation][]).

The backend ``method="smc"`` (and ``"is"``, its threshold-0 case) also takes a learned
proposal (``proposal_params``, [ppl.inference.proposal][]) and rejuvenation moves
(``rejuvenate=k``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ppl.inference import engine as E
from ppl.inference import resampling as R
from ppl.inference.base import (Backend, Options, Phases, RunConfig, check_choice,
                                check_count, check_fraction, option)
from ppl.errors import OptionError
from ppl.result import Result, normalized

__all__ = ["SMCState", "SMCInfo", "LoopCarry", "PopulationInfo", "ProposalHooks",
           "ResamplingOptions", "SMCOptions", "init", "build_kernel", "loop_start", "loop_advance",
           "loop_final", "loop_status", "run_loop", "population_info", "population_result",
           "make_runner", "BACKEND"]


class SMCState(NamedTuple):
    """The carried state of the SMC loop (histories live here: ``while_loop`` stacks nothing)."""

    particles: E.Particles
    kv: E.KVState
    t: jax.Array
    ess: jax.Array  # float32[T]: ESS before each step's resampling decision
    ancestors: jax.Array  # int32[T, N]
    resampled: jax.Array  # bool[T]
    hist_tokens: jax.Array  # int32[T, N]: token slot i's sequence got at step t (-1: finished)
    hist_logw: jax.Array  # float32[T, N]: log-weights after step t
    move_acc: jax.Array  # float32[T]: acceptance rate of the moves after step t's resampling (NaN: none)
    # int32: the first NaN/+inf cause code any particle got (-1: none). Kept for the run, not
    # per particle, so that resampling a bad particle away cannot hide the error.
    nan_cause: jax.Array = None


class SMCInfo(NamedTuple):
    """What one kernel step reports."""

    ess: jax.Array
    resampled: jax.Array
    ancestors: jax.Array


class PopulationInfo(NamedTuple):
    """What a particle backend's runner returns beside the final particles.

    Attributes:
        steps: steps the loop ran.
        ess, ancestors, resampled, hist_tokens, hist_logw: the per-step histories
            ([SMCState][ppl.inference.smc.SMCState]), valid up to ``steps``.
        nan: the LM produced NaN log-probabilities for a live particle.
        extras: backend-specific arrays, added to ``Result.extras``.
    """

    steps: jax.Array
    ess: jax.Array
    ancestors: jax.Array
    resampled: jax.Array
    hist_tokens: jax.Array
    hist_logw: jax.Array
    nan: jax.Array
    extras: dict


class ProposalHooks(NamedTuple):
    """How the kernel changes the program's token draws (the mutation ``M_t``).

    Attributes:
        bias_fn: optional ``bias_fn(tokens[T], length, hidden[K, D]) -> float32[V]``: a logit
            bias on each particle's LM-token proposal, ``q'(x) ∝ q(x) exp(bias[x])``; the
            weight increment becomes ``log p(x) - log q'(x) + ...`` (learned proposals).
        forced: optional ``(tokens int32[N, T], upto int32[N])``: particle ``i``'s token at
            position ``l < upto[i]`` is ``tokens[i, l]`` instead of a draw, weighted as the
            proposal would weight it (conditional SMC, rejuvenation replays).
    """

    bias_fn: Callable | None = None
    forced: Any = None

    def inputs(self, parts: E.Particles, kv: E.KVState):
        """``(bias[N, V] | None, force (flags[N], tokens[N]) | None)`` for this step."""
        bias = None if self.bias_fn is None else jax.vmap(self.bias_fn)(parts.tokens, parts.length,
                                                                         kv.hidden)
        force = None
        if self.forced is not None:
            f_tok, f_upto = self.forced
            pos = jnp.minimum(parts.length, f_tok.shape[1] - 1)
            force = (parts.length < f_upto, jnp.take_along_axis(f_tok, pos[:, None], 1)[:, 0])
        return bias, force


def init(key, setup: E.Setup, params, num_particles: int) -> SMCState:
    parts, kv = E.init_population(key, setup, params, num_particles)
    t_max = setup.max_tokens
    return SMCState(
        parts,
        kv,
        jnp.zeros((), jnp.int32),
        jnp.zeros((t_max,), jnp.float32),
        jnp.broadcast_to(jnp.arange(num_particles, dtype=jnp.int32), (t_max, num_particles)),
        jnp.zeros((t_max,), bool),
        jnp.full((t_max, num_particles), -1, jnp.int32),
        jnp.zeros((t_max, num_particles), jnp.float32),
        jnp.full((t_max,), jnp.nan, jnp.float32),
        jnp.full((), -1, jnp.int32),
    )


def nan_cause_seen(setup: E.Setup, parts: E.Particles, seen: jax.Array) -> jax.Array:
    """``seen``, or else the first NaN/+inf cause code among ``parts`` (-1: none): the
    run-level record [ppl.inference.driver.raise_if_failed][] reports."""
    from ppl.context import NAN_CAUSE

    mask = np.array([n.startswith(NAN_CAUSE) for n in setup.condition_names], bool)
    if not mask.any():
        return seen
    hit = (parts.cause >= 0) & jnp.asarray(mask)[jnp.maximum(parts.cause, 0)]
    first = jnp.where(jnp.any(hit), parts.cause[jnp.argmax(hit)], -1).astype(jnp.int32)
    return jnp.where(seen >= 0, seen, first)


def build_kernel(setup: E.Setup, config: RunConfig, params, resampling: R.Resampling,
                 hooks: ProposalHooks = ProposalHooks(), move_fn: Callable | None = None,
                 units: bool = False, unit=None):
    """Returns ``step(key, state) -> (state, info)``: one token for every particle.

    Args:
        resampling: the strategy ``R_t`` (threshold, ancestor draw, row gather).
        units: honour the units the program marks ([Context.boundary][ppl.Context.boundary])
            and ``unit``: at each step only the particles that ended a unit (or finished) may
            be resampled, among themselves, when *their* ESS falls below the threshold times
            their number ([masked_ancestors][ppl.inference.resampling.masked_ancestors]).
            False: every token is a boundary (the program's marks are ignored).
        unit: the ``unit=`` option of ``method="smc"``: None, an int ``k`` (a boundary when a
            particle's length is a multiple of ``k``) or a tuple of token ids (a boundary
            after any of them); combined with the program's marks by *and*.
        hooks: bias / forced replay of the program's token draws.
        move_fn: resample-move: ``move_fn(key, t, particles, kv, tokens, old_length) ->
            (particles, kv, tokens, old_length, accept_rate, fed)`` applied after every
            resampling (``particles`` after this step's proposal, ``kv`` before its tokens are
            fed; ``fed[i]``: particle ``i``'s LM state already includes all its tokens, so it
            is not advanced; see [ppl.inference.rejuvenation][]).
    """
    thr = float(resampling.ess_threshold)
    # The KV cache is updated in place (only the slots that changed) on one device when the
    # strategy keeps survivors in their slots; sharded, the gather lets XLA's partitioner
    # move rows between devices.
    in_place = not config.sharded and resampling.stable

    def step(key, state: SMCState):
        k_prop, k_res, k_anc, k_move = jax.random.split(key, 4)
        parts0 = state.particles
        bias, force = hooks.inputs(parts0, state.kv)
        parts, tokens = E.propose(k_prop, setup, parts0, state.kv.logprobs, state.t,
                                  bias=bias, force=force, boundaries=units)
        eligible = _eligible(parts, unit) if units else None
        parts = parts._replace(boundary=None)
        parts0_new = parts  # before resampling: every particle's cause as it happened
        if eligible is not None and not resampling.units:
            raise OptionError("This resampling strategy (islands, conditional SMC) does not "
                              "support units; drop unit= / ctx.boundary() or use islands=1.")
        n = parts.logw.shape[0]
        ess = R.ess(parts.logw)
        all_done = jnp.all(parts.done)
        # Never resample after the last step: it only adds variance.
        if eligible is None:
            do_res = (ess < thr * n) & ~all_done & (thr > 0)
        else:
            m = jnp.sum(eligible.astype(jnp.int32))
            ess_e = R.ess(jnp.where(eligible, parts.logw, -jnp.inf))
            do_res = (ess_e < thr * m) & (ess_e > 0) & ~all_done & (thr > 0)

        def take(x, rows):
            return resampling.take(x, rows, state.t)

        def resample(args):
            parts, kv, tokens, old_len = args
            idx, logw = resampling.select(k_res, k_anc, state.t,
                                          R.Candidates(parts, state.kv, tokens, old_len,
                                                       eligible))
            parts, kv = E.gather(setup, parts, kv, idx, take=take)
            parts = parts._replace(logw=logw)
            return parts, kv, tokens[idx], old_len[idx], idx

        def keep(args):
            parts, kv, tokens, old_len = args
            return parts, kv, tokens, old_len, jnp.arange(n, dtype=jnp.int32)

        small_kv = state.kv._replace(cache=())
        parts, kv, tokens, old_len, idx = jax.lax.cond(
            do_res, resample, keep, (parts, small_kv, tokens, parts0.length))
        if in_place:
            cache = E.copy_rows_in_place(setup, state.kv.cache, idx)
        else:
            # Layer by layer, each under its own cond, outside the cond that reorders the
            # (small) particle arrays: one cond over the whole cache made XLA hold a second
            # full copy of it (the gather's output) next to the loop's own.
            rows = E.cache_rows(setup, idx)
            cache = jax.tree.map(
                lambda x: jax.lax.cond(do_res, lambda y: take(y, rows), lambda y: y, x),
                state.kv.cache)
        kv = kv._replace(cache=cache)
        move_acc = jnp.full((), jnp.nan, jnp.float32)
        fed = None
        if move_fn is not None:
            parts, kv, tokens, old_len, move_acc, fed = jax.lax.cond(
                do_res,
                lambda a: move_fn(k_move, state.t, *a),
                lambda a: a + (jnp.full((), jnp.nan, jnp.float32), jnp.zeros((n,), bool)),
                (parts, kv, tokens, old_len))
        active = ~parts.done
        kv_fed = kv
        kv = E.advance_live(setup, params, kv, tokens, old_len, active, sharded=config.sharded)
        if fed is not None:
            # Moved particles come with an LM state that has already seen all their tokens
            # (the replay's); feeding their last token again is not a no-op for every LM.
            kv = E.select_rows(setup, fed, kv_fed, kv)
        t = state.t
        new = SMCState(
            parts,
            kv,
            t + 1,
            state.ess.at[t].set(ess),
            state.ancestors.at[t].set(idx),
            state.resampled.at[t].set(do_res),
            state.hist_tokens.at[t].set(jnp.where(parts0.done[idx], -1, tokens)),
            state.hist_logw.at[t].set(parts.logw),
            state.move_acc.at[t].set(move_acc),
            nan_cause_seen(setup, parts0_new, state.nan_cause),
        )
        return new, SMCInfo(ess, do_res, idx)

    return step


def _eligible(parts: E.Particles, unit):
    """``bool[N]``: the particles at a unit boundary after this step (finished ones always),
    or None when neither the program nor ``unit`` declares units."""
    if parts.boundary is None and unit is None:
        return None
    b = parts.done if parts.boundary is None else parts.boundary
    if unit is None:
        return b | parts.done
    if isinstance(unit, int):
        at = (parts.length % unit) == 0
    else:
        last = jnp.take_along_axis(parts.tokens, jnp.maximum(parts.length - 1, 0)[:, None], 1)[:, 0]
        at = jnp.isin(last, jnp.asarray(unit, jnp.int32))
    prog = jnp.ones_like(at) if parts.boundary is None else parts.boundary
    return (at & prog) | parts.done


class LoopCarry(NamedTuple):
    """What the token loop carries between chunks of steps: the state and the keys of what
    is left to do (``k_post``: end-of-run moves)."""

    state: SMCState
    k_loop: jax.Array
    k_fin: jax.Array
    k_post: jax.Array


def loop_start(key, setup: E.Setup, config: RunConfig, params, init_fn=init,
               k_post=None) -> LoopCarry:
    """Splits ``key`` into the init, loop and final keys and runs ``init_fn``."""
    from ppl.inference.sharding import constrain_state

    k_init, k_loop, k_fin = jax.random.split(key, 3)
    state = constrain_state(init_fn(k_init, setup, params, config.num_particles), config.mesh)
    return LoopCarry(state, k_loop, k_fin, k_fin if k_post is None else k_post)


def loop_advance(carry: LoopCarry, setup: E.Setup, config: RunConfig, kernel_fn,
                 until) -> LoopCarry:
    """Runs ``kernel_fn`` under ``lax.while_loop`` for the steps ``t < min(until, max_tokens)``
    while any particle is running (step ``t``'s key is ``fold_in(k_loop, t)``)."""
    from ppl.inference.sharding import constrain_state

    limit = jnp.minimum(jnp.asarray(until, jnp.int32), setup.max_tokens)

    def cond(s):
        return (s.t < limit) & ~jnp.all(s.particles.done)

    def body(s):
        s, _ = kernel_fn(jax.random.fold_in(carry.k_loop, s.t), s)
        return constrain_state(s, config.mesh)

    return carry._replace(state=jax.lax.while_loop(cond, body, carry.state))


def loop_final(carry: LoopCarry, setup: E.Setup) -> SMCState:
    """Applies ``final`` to every particle of the finished loop."""
    state = carry.state
    return state._replace(particles=E.apply_final(carry.k_fin, setup, state.particles))


def loop_status(carry: LoopCarry):
    """``(steps done, live particles, last ESS, finished)``."""
    s = carry.state
    done = jnp.all(s.particles.done) | (s.t >= s.ess.shape[0])
    return s.t, jnp.sum(~s.particles.done), s.ess[jnp.maximum(s.t - 1, 0)], done


def run_loop(key, setup: E.Setup, config: RunConfig, params, kernel_fn, init_fn=init,
             stop=None) -> SMCState:
    """Runs ``kernel`` under ``lax.while_loop`` until every particle finished, then ``final``.

    With ``stop`` (a traced step count) the loop ends after that many steps instead and
    ``final`` is not applied: the population then targets the intermediate distribution
    ``gamma_stop`` (used by intermediate rejuvenation moves).
    """
    carry = loop_start(key, setup, config, params, init_fn)
    carry = loop_advance(carry, setup, config, kernel_fn,
                         setup.max_tokens if stop is None else stop)
    return carry.state if stop is not None else loop_final(carry, setup)


def population_info(state: SMCState, extras: dict | None = None) -> PopulationInfo:
    """The runner's ``info`` from the final loop state."""
    extras = dict(extras or {})
    if state.nan_cause is not None:
        extras.setdefault("nan_cause", state.nan_cause)
    return PopulationInfo(state.t, state.ess, state.ancestors, state.resampled,
                          state.hist_tokens, state.hist_logw, state.kv.nan, extras)


def population_result(name: str):
    """``to_result`` of the particle backends: the final weighted particles as a Result."""

    def to_result(setup: E.Setup, config: RunConfig, options, parts: E.Particles,
                  info: PopulationInfo) -> Result:
        tokens = np.asarray(parts.tokens)
        lengths = np.asarray(parts.length)
        logw = np.asarray(parts.logw, np.float64)
        weights, log_z = normalized(logw)
        steps = int(info.steps)
        res = Result(
            method=name,
            tokens=tokens,
            lengths=lengths,
            texts=[setup.decode_text(row[:k]) for row, k in zip(tokens, lengths)],
            log_weights=logw,
            weights=weights,
            log_evidence=log_z,
            ess=np.asarray(info.ess)[:steps],
            ancestors=np.asarray(info.ancestors)[:steps],
            resampled=np.asarray(info.resampled)[:steps],
            timings={},
            num_steps=steps,
            states=jax.tree.map(np.asarray, parts.state),
        )
        res.extras["causes"] = np.asarray(parts.cause)
        res.extras["history"] = {
            "tokens": np.asarray(info.hist_tokens)[:steps],
            "log_weights": np.asarray(info.hist_logw)[:steps],
        }
        res.extras["token_strings"] = setup.lm.vocab.token_strings
        res.extras.update({k: np.asarray(v) for k, v in info.extras.items()})
        return res

    return to_result


# ---- the backends: method="smc" and method="is" -----------------------------------------------

@dataclasses.dataclass(frozen=True)
class ResamplingOptions(Options):
    """Options of every backend that resamples.

    Attributes:
        resampling: ``"multinomial"``, ``"stratified"``, ``"systematic"`` or ``"residual"``.
        ess_threshold: resample when ``ESS < ess_threshold * N``; 0 never resamples
            (importance sampling), 1 at every step (unless all weights are equal).
    """

    resampling: str = option(R.DEFAULT_SCHEME, check_choice, tuple(R.RESAMPLERS),
                             "resampling scheme")
    ess_threshold: float = option(R.DEFAULT_ESS_THRESHOLD, check_fraction)


@dataclasses.dataclass(frozen=True)
class ISOptions(Options):
    """Options of ``method="is"``.

    Attributes:
        proposal_params: a learned proposal (``extras["vi_params"]`` of ``method="vi"``).
    """

    proposal_params: Any = None


@dataclasses.dataclass(frozen=True)
class SMCOptions(ResamplingOptions):
    """Options of ``method="smc"``.

    Attributes:
        islands: split the particles into this many equal groups that resample within
            themselves (each group's weights reset to the group's mean weight, so the final
            estimate is the mean of the islands' unbiased estimates). With particles sharded
            over devices, one island per device keeps resampling local.
        exchange_every: with islands, every this many steps a resampling is global instead
            (0: never).
        rejuvenate: MH moves per particle after every resampling and at the end (0: none).
        rejuvenate_at: ``"resample"`` (after every resampling and at the end) or ``"end"``.
        proposal_params: a learned proposal (``extras["vi_params"]`` of ``method="vi"``).
        unit: where resampling may happen (units), on top of the boundaries the program marks
            with [Context.boundary][ppl.Context.boundary]: None (every token, or the
            program's marks), an int ``k`` (every ``k`` tokens of a particle) or a tuple of
            token ids (after any of them, e.g. a newline's id). Particles at a boundary are
            resampled among themselves; the others keep their weights (exact for every
            choice, see docs/backends.md).
        anneal: annealed resampling: None (plain), a number ``beta`` in ``(0, 1]`` (select
            ancestors with probabilities ``∝ w^beta``) or ``"entropy"`` (entropic annealing:
            ``beta`` from the ESS at each resampling,
            [anneal_beta][ppl.inference.resampling.anneal_beta]); each selected particle
            keeps the weight ``w^(1 - beta)`` (times a constant), so results stay exact.
    """

    islands: int = option(1, check_count, 1)
    exchange_every: int = option(0, check_count, 0)
    rejuvenate: int = option(0, check_count, 0)
    rejuvenate_at: str = option("resample", check_choice, ("resample", "end"))
    proposal_params: Any = None
    unit: Any = option(None, lambda name, v: check_unit(name, v))
    anneal: Any = option(None, lambda name, v: check_anneal(name, v))


def check_anneal(name: str, value):
    """``anneal=``: None, ``"entropy"`` or a number in ``(0, 1]``."""
    if value is None or value == "entropy":
        return value
    if isinstance(value, str):
        raise OptionError(f"{name}={value!r}: give 'entropy', a number in (0, 1] or None.")
    from ppl.inference.base import check_number

    return check_number(name, value, 0.0, 1.0, open_low=True)


def check_unit(name: str, value):
    """``unit=``: None, an int >= 1, or a non-empty tuple of token ids (lists accepted)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        ids = tuple(value)
        if not ids or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0
                          for i in ids):
            raise OptionError(f"{name} as token ids must be a non-empty list of ids >= 0, got "
                              f"{value!r}.")
        return tuple(int(i) for i in ids)
    if isinstance(value, str):
        raise OptionError(f"{name}={value!r}: text units (word, line, sentence, ...) are "
                          f"ppl.steer(unit=...)'s; here give an int k (every k tokens) or a "
                          f"tuple of token ids.")
    return check_count(name, value, 1)


def _proposal(setup: E.Setup, options):
    """``(kind, phi)`` of the options' learned proposal, or ``(None, None)``."""
    if options.proposal_params is None:
        return None, None
    from ppl.inference import proposal

    return proposal.check_params(options.proposal_params, setup)


def _params(setup: E.Setup, options):
    kind, phi = _proposal(setup, options)
    return setup.lm.params if kind is None else (setup.lm.params, phi)


def _strategy(options, config: RunConfig, setup: E.Setup | None = None) -> R.Resampling:
    if isinstance(options, SMCOptions) and options.islands > 1:
        from ppl.inference.sharding import islands

        return islands(options.resampling, options.ess_threshold, options.islands,
                       options.exchange_every)
    if isinstance(options, SMCOptions) and options.anneal is not None:
        return R.adaptive(options.resampling, options.ess_threshold, options.anneal,
                          1 if setup is None else setup.max_tokens)
    if isinstance(options, ResamplingOptions):
        return R.adaptive(options.resampling, options.ess_threshold)
    return R.adaptive(ess_threshold=0.0)  # importance sampling: never resample


def make_runner(setup: E.Setup, config: RunConfig, options) -> Phases:
    """The [Phases][ppl.inference.base.Phases] of ``method="smc"`` / ``"is"``; the whole run
    returns ``(particles, PopulationInfo)``.

    With a learned proposal ``params`` is ``(lm params, phi)`` and every token draw is from
    ``q_phi``; with ``rejuvenate=k`` the moves run after every resampling (and at the end).
    Weights are ``log p - log q_phi + factors`` at every step, so results are exact for any
    bias.
    """
    from ppl.inference import proposal, rejuvenation

    kind, _ = _proposal(setup, options)
    strategy = _strategy(options, config, setup)
    moves = getattr(options, "rejuvenate", 0)
    at_resample = getattr(options, "rejuvenate_at", "resample") == "resample"
    # The plain sweep uses the run's key itself; with a proposal or moves it is split in two
    # (the sweep's and the final moves').
    split = bool(moves) or kind is not None

    def unpack(p):
        return (p, None) if kind is None else (p[0], proposal.bias_fn(kind, p[1], setup))

    def start(key, p):
        lm_p, _ = unpack(p)
        k_smc, k_rej = jax.random.split(key) if split else (key, None)
        return loop_start(k_smc, setup, config, lm_p, k_post=k_rej)

    def advance(carry, p, until):
        lm_p, bfn = unpack(p)
        move_fn = None
        if moves and at_resample and strategy.ess_threshold > 0:
            move_fn = rejuvenation.build_intermediate_move(setup, config, lm_p, moves, bfn)
        kernel = build_kernel(setup, config, lm_p, strategy, ProposalHooks(bias_fn=bfn), move_fn,
                              units=move_fn is None, unit=getattr(options, "unit", None))
        return loop_advance(carry, setup, config, kernel, until)

    def finish(carry, p):
        lm_p, bfn = unpack(p)
        state = loop_final(carry, setup)
        if not moves:
            return _finish(state)
        parts, info = rejuvenation.rejuvenate(carry.k_post, setup, config, lm_p, state.particles,
                                              moves, scheme=strategy_scheme(options),
                                              ess_threshold=strategy.ess_threshold, bias_fn=bfn)
        acc = jnp.mean(info.accepted.astype(jnp.float32), axis=1)
        return _finish(state._replace(particles=parts), {
            "rejuvenation_acceptance": acc, "rejuvenation_step_acceptance": state.move_acc})

    return Phases(start, advance, finish, loop_status)


def strategy_scheme(options) -> str:
    return getattr(options, "resampling", R.DEFAULT_SCHEME)


def _finish(state: SMCState, extras: dict | None = None):
    return state.particles, population_info(state, extras)


def _validate(setup: E.Setup, config: RunConfig, options) -> None:
    islands = getattr(options, "islands", 1)
    if config.num_particles % islands:
        raise OptionError(f"particles ({config.num_particles}) must be a multiple of islands "
                          f"({islands}).")
    if getattr(options, "unit", None) is not None and (
            getattr(options, "islands", 1) > 1 or getattr(options, "rejuvenate", 0)):
        raise OptionError("unit= cannot be combined with islands or rejuvenate yet (their "
                          "resampling and moves assume every particle is at a boundary).")
    if getattr(options, "anneal", None) is not None and (
            getattr(options, "islands", 1) > 1 or getattr(options, "rejuvenate", 0)):
        raise OptionError("anneal= cannot be combined with islands or rejuvenate yet (their "
                          "moves assume equally weighted particles after a resampling).")
    if getattr(options, "rejuvenate", 0):
        from ppl.inference._chain import require_token_only

        require_token_only(setup)
    _proposal(setup, options)  # shapes checked before compiling


BACKEND = Backend(
    name="smc",
    family="particle",
    options=SMCOptions,
    make_runner=make_runner,
    to_result=population_result("smc"),
    params=_params,
    validate=_validate,
    summary="sequential Monte Carlo with adaptive resampling (islands, rejuvenation, learned "
            "proposals)",
)
