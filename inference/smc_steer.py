"""SMC steering (LLaMPPL's ``smc_steer``): expand, then resample without replacement.

Each step every live particle is expanded into ``num_beams`` children (independent draws of
the next token from the program's proposal, each child carrying ``1/num_beams`` of its parent's
weight); a finished particle keeps a single copy. Of the ``N * num_beams`` candidates, the
Fearnhead–Clifford optimal resampling ([ppl.inference.resampling.optimal][]) keeps ``N``:
the heaviest with their own weights, the rest by systematic sampling with a common weight. The
total weight is preserved, so ``log Z_hat = log mean_i exp(logw_i)`` stays unbiased. The LM
then runs once on the ``N`` survivors (children share their parent's KV cache until then).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from ppl.inference import engine as E
from ppl.inference import resampling as R
from ppl.inference import smc
from ppl.inference.base import Backend, Options, Phases, RunConfig, check_count, option
from ppl.models.base import reorder

__all__ = ["SteerOptions", "init", "build_kernel", "make_runner", "BACKEND"]

init = smc.init


@dataclasses.dataclass(frozen=True)
class SteerOptions(Options):
    """Options of ``method="smc_steer"``.

    Attributes:
        num_beams: children drawn per live particle at every step.
    """

    num_beams: int = option(3, check_count, 1)


def build_kernel(setup: E.Setup, config: RunConfig, params, num_beams: int):
    """``step(key, state) -> (state, info)`` with ``num_beams`` children per particle."""
    b = int(num_beams)

    def step(key, state: smc.SMCState):
        k_prop, k_res = jax.random.split(key)
        parts0 = state.particles
        n = parts0.logw.shape[0]
        rep = lambda x: jnp.repeat(x, b, axis=0)  # noqa: E731
        cand = jax.tree.map(rep, parts0)
        cand, tokens = E.propose(k_prop, setup, cand, rep(state.kv.logprobs), state.t)
        child = jnp.tile(jnp.arange(b), n)
        was_done = rep(parts0.done)
        logw = jnp.where(was_done, jnp.where(child == 0, cand.logw, -jnp.inf),
                         cand.logw - math.log(b))
        ess = R.ess(logw)
        idx, new_lw = R.optimal(k_res, logw, n)
        parts = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), cand)
        parts = parts._replace(logw=new_lw.astype(jnp.float32))
        parents = (idx // b).astype(jnp.int32)
        rows = E.cache_rows(setup, parents)
        kv = state.kv._replace(cache=reorder(state.kv.cache, rows),
                               logprobs=state.kv.logprobs[parents],
                               hidden=state.kv.hidden[parents])
        active = ~parts.done
        tok = tokens[idx]
        old_len = parts0.length[parents]
        kv = E.advance_live(setup, params, kv, tok, old_len, active, sharded=config.sharded)
        t = state.t
        new = smc.SMCState(parts, kv, t + 1, state.ess.at[t].set(ess),
                           state.ancestors.at[t].set(parents),
                           state.resampled.at[t].set(True),
                           state.hist_tokens.at[t].set(jnp.where(parts0.done[parents], -1, tok)),
                           state.hist_logw.at[t].set(parts.logw), state.move_acc,
                           smc.nan_cause_seen(setup, cand, state.nan_cause))
        return new, smc.SMCInfo(ess, jnp.ones((), bool), parents)

    return step


def make_runner(setup: E.Setup, config: RunConfig, options: SteerOptions) -> Phases:
    """The [Phases][ppl.inference.base.Phases]; the whole run returns ``(particles,
    PopulationInfo)``."""

    def start(key, params):
        return smc.loop_start(key, setup, config, params)

    def advance(carry, params, until):
        kernel = build_kernel(setup, config, params, options.num_beams)
        return smc.loop_advance(carry, setup, config, kernel, until)

    def finish(carry, params):
        state = smc.loop_final(carry, setup)
        return state.particles, smc.population_info(state)

    return Phases(start, advance, finish, smc.loop_status)


BACKEND = Backend(
    name="smc_steer",
    family="particle",
    options=SteerOptions,
    make_runner=make_runner,
    to_result=smc.population_result("smc_steer"),
    # Each step proposes for N * num_beams candidates (their step buffers), while the KV
    # cache holds only the N survivors.
    step_rows=lambda config, options: config.num_particles * options.num_beams,
    summary="LLaMPPL's SMC steering: num_beams children per particle, optimal resampling "
            "back to N",
)
