"""Particle Gibbs: iterated conditional SMC (Andrieu, Doucet & Holenstein 2010).

Each MCMC step runs a *conditional* SMC sweep (CSMC) with ``N`` particles in which particle 0
is the retained reference sequence ``x'``:

* particle 0's token at every step is forced to ``x'_t`` (the ``force`` hook of
  :class:`~ppl.Context`); its weight increment is computed exactly as the program computes
  any particle's, ``log p(x'_t | x'_<t) - log q(x'_t | x'_<t) + factors + twist changes``;
* at each resampling (ESS-triggered as in SMC; the decision is a symmetric function of all
  weights, which keeps the kernel valid), particle 0 keeps ancestor 0 and particles
  ``1..N-1`` draw their ancestors i.i.d. from the normalised weights of all ``N`` particles
  (multinomial; the ``resampling`` option only applies to the initial unconditional sweep);
* at the end a new reference is drawn with probability ``w_k / Σ w`` (final weights).

This kernel leaves the posterior ``pi`` invariant for every ``N >= 2`` and is uniformly
ergodic under weak conditions; unlike PIMH it never rejects a whole sweep, but the reference
lineage can make consecutive samples share prefixes (path degeneracy).

**Ancestor sampling is not done** (``ancestor sampling`` would redraw particle 0's ancestor at
each resampling with probability ``∝ w_{t-1}^i · gamma(x^i_{<t}, x'_{>=t}) / gamma_{t-1}(x^i_{<t})``).
For a non-Markov target (a transformer LM, any program state that depends on the whole
prefix) that weight needs the probability of the reference's whole suffix under every
candidate prefix: ``N`` replays of up to ``T`` tokens at every resampling step, i.e.
``O(N T^2)`` LM work per sweep instead of ``O(N T)``. Plain conditional SMC (reference
ancestor fixed) is exact, so this module implements that; its known weakness is slower
mixing of early tokens, which more particles, ``chains`` or rejuvenation
(``method="smc", rejuvenate=k``) mitigate.

Requirements: the program's only random choices are LM tokens (a latent sampled in ``init``
or ``step`` could not be replayed; this raises :class:`~ppl.ProgramError`), and weights are a
deterministic function of the tokens (no use of ``ctx.key()`` that changes weights).

Evidence: the chain reports ``log mean_s Z_hat_s`` over its sweeps, but conditional sweeps'
``Z_hat`` are *not* unbiased (they contain the reference); treat it as a diagnostic and use
``method="smc"``/``"pimh"`` for evidence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppl.inference import _chain as C
from ppl.inference import _engine as E

__all__ = ["init", "build_kernel", "run"]


def init(key, setup: E.Setup, params, num_particles: int, *, resampling: str = "stratified",
         ess_threshold: float = 0.5):
    """The chain's first reference: one draw from an unconditional SMC sweep's final weights."""
    k_sweep, k_pick = jax.random.split(key)
    parts, log_z, nan = C.sweep(k_sweep, setup, params, num_particles, resampling=resampling,
                                ess_threshold=ess_threshold)
    tok, length, _ = C.pick(k_pick, parts)
    return C.ChainState(tok, length, log_z), C.ChainInfo(jnp.ones((), bool), log_z, nan, parts.cause)


def build_kernel(setup: E.Setup, params, num_particles: int, *, ess_threshold: float = 0.5):
    """``step(key, state) -> (state, info)``: one conditional SMC sweep around the reference.

    ``info.accepted`` is True when the new reference differs from the old one.
    """
    n = num_particles

    def step(key, state: C.ChainState):
        k_sweep, k_pick = jax.random.split(key)
        ref_tokens = jnp.broadcast_to(state.tokens, (n,) + state.tokens.shape)
        upto = jnp.where(jnp.arange(n) == 0, state.length, 0)
        parts, log_z, nan = C.sweep(k_sweep, setup, params, n, ess_threshold=ess_threshold,
                                    forced=(ref_tokens, upto), keep_first=True)
        tok, length, _ = C.pick(k_pick, parts)
        changed = ~C.same_sequence(tok, length, state.tokens, state.length)
        return C.ChainState(tok, length, log_z), C.ChainInfo(changed, log_z, nan, parts.cause)

    return step


def run(program, *, particles: int, seed, steps: int = 100, burn_in: int = 0, chains: int = 1,
        resampling: str = "stratified", ess_threshold: float = 0.5):
    """Runs ``chains`` particle Gibbs chains of ``steps`` conditional sweeps each."""
    n = int(particles)
    if n < 2:
        raise ValueError(f"particle Gibbs needs particles >= 2 (one is the reference), got {n}.")
    setup = E.prepare(program)
    C.require_token_only(setup)
    thr = float(ess_threshold)

    def init_fn(key, setup, params):
        return init(key, setup, params, n, resampling=resampling, ess_threshold=thr)

    def step_fn(key, state, setup, params):
        return build_kernel(setup, params, n, ess_threshold=thr)(key, state)

    return C.run_chains("particle_gibbs", program, seed, particles=n, chains=chains, steps=steps,
                        burn_in=burn_in, init_fn=init_fn, step_fn=step_fn,
                        cache_key=(resampling, thr))
