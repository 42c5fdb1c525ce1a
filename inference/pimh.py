"""Particle independent Metropolis–Hastings (PIMH; Andrieu, Doucet & Holenstein 2010).

Every MCMC step runs a fresh, independent SMC sweep with ``N`` particles (the SMC kernel of
:mod:`ppl.inference.smc`, so resampling scheme, ESS threshold and proposal bias all apply),
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

from ppl.inference import _chain as C
from ppl.inference import _engine as E

__all__ = ["init", "build_kernel", "run"]


def init(key, setup: E.Setup, params, num_particles: int, **sweep_options):
    """The chain's first state: a sample drawn from one unconditional sweep (always kept)."""
    k_sweep, k_pick = jax.random.split(key)
    parts, log_z, nan = C.sweep(k_sweep, setup, params, num_particles, **sweep_options)
    tok, length, _ = C.pick(k_pick, parts)
    state = C.ChainState(tok, length, log_z)
    return state, C.ChainInfo(jnp.ones((), bool), log_z, nan, parts.cause)


def build_kernel(setup: E.Setup, params, num_particles: int, **sweep_options):
    """``step(key, state) -> (state, info)``: one sweep, one candidate, one MH decision.

    ``log alpha = log Z_hat* - log Z_hat``; a sweep with ``Z_hat* = 0`` is always rejected,
    and any candidate with ``Z_hat* > 0`` is accepted from a state with ``Z_hat = 0``.
    """

    def step(key, state: C.ChainState):
        k_sweep, k_pick, k_acc = jax.random.split(key, 3)
        parts, log_z, nan = C.sweep(k_sweep, setup, params, num_particles, **sweep_options)
        tok, length, _ = C.pick(k_pick, parts)
        finite_new = jnp.isfinite(log_z)
        log_alpha = jnp.where(jnp.isfinite(state.log_z), log_z - state.log_z, jnp.inf)
        accept = finite_new & (jnp.log(jax.random.uniform(k_acc)) < log_alpha)
        new = C.ChainState(
            jnp.where(accept, tok, state.tokens),
            jnp.where(accept, length, state.length),
            jnp.where(accept, log_z, state.log_z),
        )
        return new, C.ChainInfo(accept, log_z, nan, parts.cause)

    return step


def run(program, *, particles: int, seed, steps: int = 100, burn_in: int = 0, chains: int = 1,
        resampling: str = "stratified", ess_threshold: float = 0.5):
    """Runs ``chains`` PIMH chains of ``steps`` steps; see :func:`ppl.inference._chain.run_chains`."""
    opts = dict(resampling=resampling, ess_threshold=float(ess_threshold))
    n = int(particles)

    def init_fn(key, setup, params):
        return init(key, setup, params, n, **opts)

    def step_fn(key, state, setup, params):
        return build_kernel(setup, params, n, **opts)(key, state)

    return C.run_chains("pimh", program, seed, particles=n, chains=chains, steps=steps,
                        burn_in=burn_in, init_fn=init_fn, step_fn=step_fn,
                        cache_key=(int(burn_in), resampling, float(ess_threshold)))
