"""SMC steering (LLaMPPL's ``smc_steer``): expand, then resample without replacement.

Each step every live particle is expanded into ``num_beams`` children (independent draws of
the next token from the program's proposal, each child carrying ``1/num_beams`` of its parent's
weight); a finished particle keeps a single copy. Of the ``N * num_beams`` candidates, the
Fearnhead–Clifford optimal resampling (:func:`ppl.inference.resampling.optimal`) keeps ``N``:
the heaviest with their own weights, the rest by systematic sampling with a common weight. The
total weight is preserved, so ``log Z_hat = log mean_i exp(logw_i)`` stays unbiased. The LM
then runs once on the ``N`` survivors (children share their parent's KV cache until then).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ppl.inference import _engine as E
from ppl.inference import resampling as R
from ppl.inference import smc
from ppl.models.base import reorder

__all__ = ["init", "build_kernel", "make_runner"]

init = smc.init


def build_kernel(setup: E.Setup, params, *, num_beams: int = 3):
    """``step(key, state) -> (state, info)`` with ``num_beams`` children per particle."""
    if int(num_beams) < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}.")
    b = int(num_beams)

    def step(key, state: smc.SMCState):
        k_prop, k_res = jax.random.split(key)
        parts0 = state.particles
        n = parts0.logw.shape[0]
        rep = lambda x: jnp.repeat(x, b, axis=0)  # noqa: E731
        cand = jax.tree.map(rep, parts0)
        cand, tokens = E.propose(k_prop, setup, cand, rep(state.lm.logprobs), state.t)
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
        lm_state = E.LMState(reorder(state.lm.cache, rows), state.lm.logprobs[parents], state.lm.nan,
                             state.lm.hidden[parents])
        active = ~parts.done
        tok = tokens[idx]
        old_len = parts0.length[parents]
        lm_state = E.advance_live(setup, params, lm_state, tok, old_len, active)
        t = state.t
        new = smc.SMCState(parts, lm_state, t + 1, state.ess.at[t].set(ess),
                           state.ancestors.at[t].set(parents),
                           state.resampled.at[t].set(True),
                           state.hist_tokens.at[t].set(jnp.where(parts0.done[parents], -1, tok)),
                           state.hist_logw.at[t].set(parts.logw), state.move_acc)
        return new, smc.SMCInfo(ess, jnp.ones((), bool), parents)

    return step


def make_runner(setup: E.Setup, num_particles: int, *, num_beams: int = 3):
    def runner(key, params):
        kernel = build_kernel(setup, params, num_beams=num_beams)
        return smc.run_loop(key, setup, params, num_particles, kernel)

    return runner
