"""Particle independent Metropolis–Hastings (PIMH; Andrieu, Doucet & Holenstein 2010).

Every MCMC step runs a fresh, independent SMC sweep with ``N`` particles (the SMC kernel of
[ppl.inference.smc][], so resampling scheme, ESS threshold and proposal bias all apply),
draws one candidate ``x*`` from the sweep's final normalised weights and accepts it with
probability::

    alpha = min(1, Z_hat* / Z_hat)

where ``Z_hat*`` is the new sweep's evidence estimate and ``Z_hat`` the estimate of the sweep
that produced the current sample. Because ``Z_hat`` is unbiased, this is an exact MCMC kernel
on an extended space whose marginal on ``x`` is the posterior ``pi``, for any ``N >= 1``
(with ``N = 1`` it is independent MH with the program's proposal). Acceptance approaches 1 as
the variance of ``log Z_hat`` shrinks.

Evidence: the sweeps are independent and each ``Z_hat`` is unbiased, so the driver reports
``log mean_s Z_hat_s`` over all sweeps (the initial one included) of all chains: an unbiased
estimate of ``Z`` from ``chains * (steps + 1) * N`` particles' worth of work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppl.inference import _chain as chain
from ppl.inference import engine as E
from ppl.inference import resampling as R
from ppl.inference.base import Backend, RunConfig

__all__ = ["init", "build_kernel", "make_runner", "BACKEND"]


def init(key, setup: E.Setup, config: RunConfig, params, resampling: R.Resampling):
    """The chain's first state: a sample drawn from one unconditional sweep (always kept)."""
    k_sweep, k_pick = jax.random.split(key)
    parts, log_z, nan = chain.sweep(k_sweep, setup, config, params, resampling)
    tok, length, _ = chain.pick(k_pick, parts)
    state = chain.ChainState(tok, length, log_z)
    return state, chain.ChainInfo(jnp.ones((), bool), log_z, nan, parts.cause)


def build_kernel(setup: E.Setup, config: RunConfig, params, resampling: R.Resampling):
    """``step(key, state) -> (state, info)``: one sweep, one candidate, one MH decision.

    ``log alpha = log Z_hat* - log Z_hat``; a sweep with ``Z_hat* = 0`` is always rejected,
    and any candidate with ``Z_hat* > 0`` is accepted from a state with ``Z_hat = 0``.
    """

    def step(key, state: chain.ChainState):
        k_sweep, k_pick, k_acc = jax.random.split(key, 3)
        parts, log_z, nan = chain.sweep(k_sweep, setup, config, params, resampling)
        tok, length, _ = chain.pick(k_pick, parts)
        finite_new = jnp.isfinite(log_z)
        log_alpha = jnp.where(jnp.isfinite(state.log_z), log_z - state.log_z, jnp.inf)
        accept = finite_new & (jnp.log(jax.random.uniform(k_acc)) < log_alpha)
        new = chain.ChainState(
            jnp.where(accept, tok, state.tokens),
            jnp.where(accept, length, state.length),
            jnp.where(accept, log_z, state.log_z),
        )
        return new, chain.ChainInfo(accept, log_z, nan, parts.cause)

    return step


def make_runner(setup: E.Setup, config: RunConfig, options: chain.ChainOptions):
    """``chains`` PIMH chains of ``steps`` steps (see [make_chain_runner][ppl.inference._chain.make_chain_runner])."""
    strategy = R.adaptive(options.resampling, options.ess_threshold)

    def init_fn(key, params):
        return init(key, setup, config, params, strategy)

    def step_fn(key, state, params):
        return build_kernel(setup, config, params, strategy)(key, state)

    return chain.make_chain_runner(setup, config, options, init_fn, step_fn)


BACKEND = Backend(
    name="pimh",
    family="mcmc",
    options=chain.ChainOptions,
    make_runner=make_runner,
    to_result=chain.chain_result("pimh", unbiased_evidence=True),
    rows=lambda config, options: config.num_particles * options.chains,
    summary="particle independent Metropolis-Hastings (an SMC sweep per step)",
)
