"""Particle Gibbs with ancestor sampling (Andrieu, Doucet & Holenstein 2010; Lindsten, Jordan
& Schön 2014).

Each MCMC step runs a *conditional* SMC sweep (CSMC) with ``N`` particles in which particle 0
is the retained reference sequence ``x'``:

* particle 0's token at every step is forced to ``x'_t`` (the ``force`` hook of
  :class:`~ppl.Context`); its weight increment is computed exactly as the program computes
  any particle's, ``log p(x'_t | x'_<t) - log q(x'_t | x'_<t) + factors + twist changes``;
* at each resampling (ESS-triggered as in SMC; the decision is a symmetric function of all
  weights, which keeps the kernel valid), particles ``1..N-1`` draw their ancestors i.i.d.
  from the normalised weights of all ``N`` particles (multinomial; the ``resampling`` option
  only applies to the initial unconditional sweep), and particle 0's ancestor is either kept
  (``ancestor_sampling=False``: plain CSMC) or redrawn by **ancestor sampling**;
* at the end a new reference is drawn with probability ``w_k / Σ w`` (final weights).

Ancestor sampling (PGAS). At a resampling after step ``t`` particle 0's ancestor ``a`` is drawn
with probability ``∝ w̃_i``::

    w̃_i = W_i · gamma_T(x^i_{<=t}, x'_{>t}) / gamma_t(x^i_{<=t})

where ``W_i`` is particle ``i``'s weight accumulated since the last resampling (which tracks
``gamma_t / q``), ``gamma_t`` the intermediate (twisted) target the SMC weights track after
step ``t`` and ``gamma_T`` the final target (``final`` included, no twist). Particle 0 then
continues as ``x^a_{<=t}`` followed by the reference's remaining tokens, so the retained
sequence can change in its *early* tokens too: that is what breaks the path degeneracy of
plain CSMC. This is a Gibbs update of the reference's ancestor index, so the kernel still
leaves ``pi`` invariant for every ``N >= 2``.

How ``w̃`` is computed for a non-Markov target: the program's state and the LM's KV cache
depend on the whole prefix, so ``gamma_T / gamma_t`` is obtained by *replaying* the
reference's suffix ``x'_{>t}`` after every particle's prefix (all ``N`` at once, a
``while_loop`` of forced steps on a copy of the population and its cache), accumulating the
weight increments plus ``log q`` of each forced token (which turns ``gamma/q`` increments into
``gamma`` ratios), then ``final``. A candidate is valid only if the concatenation is a
sequence the program can produce: while the reference is still running, ``i`` must be
running and finish exactly where the reference does; once the reference has finished, every
finished ``i`` is valid (``w̃_i = W_i · exp(final factors)``).
Cost: a resampling after step ``t`` replays ``L' - t`` tokens for ``N`` rows, so with
resampling at every step a sweep does ``O(N L'^2 / 2)`` LM work instead of ``O(N L')``, and
holds a second copy of the KV cache. Pass ``ancestor_sampling=False`` for plain CSMC when
that is too slow (it is exact too, but mixes the early tokens slowly).

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

__all__ = ["init", "build_kernel", "ancestor_log_weights", "run"]


def init(key, setup: E.Setup, params, num_particles: int, *, resampling: str = "stratified",
         ess_threshold: float = 0.5):
    """The chain's first reference: one draw from an unconditional SMC sweep's final weights."""
    k_sweep, k_pick = jax.random.split(key)
    parts, log_z, nan = C.sweep(k_sweep, setup, params, num_particles, resampling=resampling,
                                ess_threshold=ess_threshold)
    tok, length, _ = C.pick(k_pick, parts)
    return C.ChainState(tok, length, log_z), C.ChainInfo(jnp.ones((), bool), log_z, nan, parts.cause)


def ancestor_log_weights(key, setup: E.Setup, params, parts: E.Particles, lm_state: E.LMState,
                         tokens, old_length, ref_tokens, ref_length):
    """``log w̃_i = log W_i + log gamma_T(x^i_{<=t}, x'_{>t}) - log gamma_t(x^i_{<=t})``.

    Args:
        parts: the population right after step ``t``'s proposal (``logw`` = ``log W``).
        lm_state: the LM before step ``t``'s tokens are fed.
        tokens, old_length: step ``t``'s tokens (``int32[N]``) and the lengths before it.
        ref_tokens, ref_length: the reference sequence ``x'`` (``int32[T]``, ``int32``).

    Returns:
        ``float32[N]`` unnormalised log ancestor weights (``-inf`` for invalid candidates).
    """
    n = parts.logw.shape[0]
    forced_tok = jnp.broadcast_to(ref_tokens, (n,) + ref_tokens.shape)
    start_done = parts.done

    def cond(c):
        p, *_ = c
        return jnp.any(~p.done & (p.length < ref_length))

    def body(c):
        p, lm, pend_tok, pend_len, lq_sum, s = c
        lm = E.advance_lm(setup, params, lm, pend_tok, pend_len, ~p.done)
        pos = jnp.minimum(p.length, ref_tokens.shape[0] - 1)
        force = (p.length < ref_length, forced_tok[jnp.arange(n), pos])
        new, tok, q = E.propose(jax.random.fold_in(key, s), setup, p, lm.logprobs, s,
                                force=force, record=True)
        lq = jnp.take_along_axis(q, tok[:, None], 1)[:, 0]
        # An observed (not drawn) token has no proposal term; a token q cannot produce has
        # already made the weight -inf.
        lq_sum = lq_sum + jnp.where(~p.done & jnp.isfinite(lq), lq, 0.0)
        return new, lm, tok, p.length, lq_sum, s + 1

    t1 = jnp.max(parts.length).astype(jnp.int32)
    p, _, _, _, lq_sum, _ = jax.lax.while_loop(
        cond, body, (parts, lm_state, tokens, old_length, jnp.zeros((n,), jnp.float32), t1))
    p = E.finalize(jax.random.fold_in(key, 1 << 30), setup, p)
    ref_finished = start_done[0]  # particle 0 follows the reference
    valid = jnp.where(ref_finished, start_done,
                      ~start_done & p.done & (p.length == ref_length))
    return jnp.where(valid, p.logw + lq_sum, -jnp.inf)


def build_kernel(setup: E.Setup, params, num_particles: int, *, ess_threshold: float = 0.5,
                 ancestor_sampling: bool = True):
    """``step(key, state) -> (state, info)``: one conditional SMC sweep around the reference.

    ``info.accepted`` is True when the new reference differs from the old one.
    """
    n = num_particles

    def step(key, state: C.ChainState):
        k_sweep, k_pick = jax.random.split(key)
        ref_tokens = jnp.broadcast_to(state.tokens, (n,) + state.tokens.shape)
        upto = jnp.where(jnp.arange(n) == 0, state.length, 0)
        def anc_fn(k, parts, lm_state, tokens, old_len):
            lw = ancestor_log_weights(k, setup, params, parts, lm_state, tokens, old_len,
                                      state.tokens, state.length)
            # All candidates invalid cannot happen (particle 0 itself is valid), but keep the
            # reference's own ancestor rather than a uniform draw if it ever did.
            return jnp.where(jnp.isfinite(jax.nn.logsumexp(lw)),
                             jax.random.categorical(k, lw), 0).astype(jnp.int32)

        parts, log_z, nan = C.sweep(k_sweep, setup, params, n, ess_threshold=ess_threshold,
                                    forced=(ref_tokens, upto), keep_first=True,
                                    ancestor_fn=anc_fn if ancestor_sampling else None)
        tok, length, _ = C.pick(k_pick, parts)
        changed = ~C.same_sequence(tok, length, state.tokens, state.length)
        return C.ChainState(tok, length, log_z), C.ChainInfo(changed, log_z, nan, parts.cause)

    return step


def run(program, *, particles: int, seed, steps: int = 100, burn_in: int = 0, chains: int = 1,
        resampling: str = "stratified", ess_threshold: float = 0.5,
        ancestor_sampling: bool = True):
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
        return build_kernel(setup, params, n, ess_threshold=thr,
                            ancestor_sampling=bool(ancestor_sampling))(key, state)

    return C.run_chains("particle_gibbs", program, seed, particles=n, chains=chains, steps=steps,
                        burn_in=burn_in, init_fn=init_fn, step_fn=step_fn,
                        cache_key=(resampling, thr, bool(ancestor_sampling)))
