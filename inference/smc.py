"""Sequential Monte Carlo with adaptive resampling (and importance sampling as its special case).

As a Feynman–Kac model: the mutation ``M_t`` is the program's ``step`` (one token per
particle, drawn from the program's proposal), the potential ``G_t`` is the incremental weight
``p(x_t | x_<t) / q(x_t | x_<t) * exp(factors + twist_t - twist_{t-1})``, and ``R_t`` resamples
when ``ESS / N`` falls below ``ess_threshold``. After a resampling every weight is set to the
mean weight, so at the end ``log Z_hat = log mean_i exp(logw_i)`` is the usual unbiased SMC
evidence estimate (product of the mean weights at each resampling and at the end).
"""

from __future__ import annotations

from functools import partial
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
    )


def build_kernel(setup: E.Setup, params, *, resampling: str = "stratified",
                 ess_threshold: float = 0.5):
    """Returns ``step(key, state) -> (state, info)``: one token for every particle.

    Args:
        resampling: one of ``multinomial``, ``stratified``, ``systematic``, ``residual``.
        ess_threshold: resample when ``ESS < ess_threshold * N``; 0 never resamples
            (importance sampling), 1 resamples at every step (unless all weights are equal).
    """
    if resampling not in R.RESAMPLERS:
        raise ValueError(f"Unknown resampling scheme {resampling!r}; choose one of {sorted(R.RESAMPLERS)}.")
    resample_fn = R.RESAMPLERS[resampling]

    def step(key, state: SMCState):
        k_prop, k_res = jax.random.split(key)
        parts0 = state.particles
        parts, tokens = E.propose(k_prop, setup, parts0, state.lm.logprobs, state.t)
        n = parts.logw.shape[0]
        ess = R.ess(parts.logw)
        all_done = jnp.all(parts.done)
        # Never resample after the last step: it only adds variance.
        do_res = (ess < ess_threshold * n) & ~all_done & (ess_threshold > 0)

        def resample(args):
            parts, lm_state, tokens, old_len = args
            idx = resample_fn(k_res, parts.logw, n)
            mean = E.log_mean_exp(parts.logw)
            parts, lm_state = E.gather(setup, parts, lm_state, idx)
            parts = parts._replace(logw=jnp.full_like(parts.logw, mean))
            return parts, lm_state, tokens[idx], old_len[idx], idx

        def keep(args):
            parts, lm_state, tokens, old_len = args
            return parts, lm_state, tokens, old_len, jnp.arange(n, dtype=jnp.int32)

        parts, lm_state, tokens, old_len, idx = jax.lax.cond(
            do_res, resample, keep, (parts, state.lm, tokens, parts0.length))
        active = ~parts.done
        lm_state = jax.lax.cond(
            jnp.any(active),
            lambda s: E.advance_lm(setup, params, s, tokens, old_len, active),
            lambda s: s,
            lm_state,
        )
        t = state.t
        new = SMCState(
            parts,
            lm_state,
            t + 1,
            state.ess.at[t].set(ess),
            state.ancestors.at[t].set(idx),
            state.resampled.at[t].set(do_res),
        )
        return new, SMCInfo(ess, do_res, idx)

    return step


def run_loop(key, setup: E.Setup, params, num_particles: int, kernel_fn, init_fn=init):
    """Runs ``kernel`` under ``lax.while_loop`` until every particle finished, then ``final``."""
    k_init, k_loop, k_fin = jax.random.split(key, 3)
    state = init_fn(k_init, setup, params, num_particles)

    def cond(s):
        return (s.t < setup.max_tokens) & ~jnp.all(s.particles.done)

    def body(s):
        s, info = kernel_fn(jax.random.fold_in(k_loop, s.t), s)
        if setup.progress_fn is not None:
            jax.debug.callback(setup.report, s.t, jnp.sum(~s.particles.done), info.ess)
        return s

    state = jax.lax.while_loop(cond, body, state)
    parts = E.finalize(k_fin, setup, state.particles)
    return state._replace(particles=parts)


def make_runner(setup: E.Setup, num_particles: int, *, resampling="stratified", ess_threshold=0.5):
    """A function ``(key, params) -> SMCState`` for ``jax.jit``."""

    def runner(key, params):
        kernel = build_kernel(setup, params, resampling=resampling, ess_threshold=ess_threshold)
        return run_loop(key, setup, params, num_particles, kernel)

    return runner
