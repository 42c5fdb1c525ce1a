"""Particle Gibbs with ancestor sampling (Andrieu, Doucet & Holenstein 2010; Lindsten, Jordan
& Schön 2014).

Each MCMC step runs a *conditional* SMC sweep (CSMC) with ``N`` particles in which particle 0
is the retained reference sequence ``x'``:

* particle 0's token at every step is forced to ``x'_t`` (the ``force`` hook of
  [Context][ppl.Context]); its weight increment is computed exactly as the program computes
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
or ``step`` could not be replayed; this raises [ProgramError][ppl.ProgramError]), and weights are a
deterministic function of the tokens (no use of ``ctx.key()`` that changes weights).

Evidence: conditional sweeps' ``Z_hat`` are *not* unbiased (they contain the reference), so
``Result.log_evidence`` is ``None``; ``log mean_s Z_hat_s`` over the sweeps is reported as a
diagnostic in ``extras["conditional_sweeps_log_mean_z"]``. Use ``method="smc"``/``"pimh"``
for evidence.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ppl.errors import OptionError
from ppl.inference import _chain as chain
from ppl.inference import engine as E
from ppl.inference import resampling as R
from ppl.inference import smc
from ppl.inference.base import Backend, RunConfig, check_bool, option

__all__ = ["GibbsOptions", "CSMCOptions", "init", "conditional", "conditional_sweep",
           "build_kernel", "ancestor_log_weights", "make_runner", "retained_tokens", "BACKEND",
           "CSMC_BACKEND"]


@dataclasses.dataclass(frozen=True)
class GibbsOptions(chain.ChainOptions):
    """Options of ``method="particle_gibbs"`` (``resampling`` applies to the initial,
    unconditional sweep; conditional sweeps resample multinomially).

    Attributes:
        ancestor_sampling: redraw the reference's ancestor at every resampling (PGAS).
    """

    ancestor_sampling: bool = option(True, check_bool)


def init(key, setup: E.Setup, config: RunConfig, params, resampling: R.Resampling):
    """The chain's first reference: one draw from an unconditional SMC sweep's final weights."""
    k_sweep, k_pick = jax.random.split(key)
    parts, log_z, nan = chain.sweep(k_sweep, setup, config, params, resampling)
    tok, length, _ = chain.pick(k_pick, parts)
    return chain.ChainState(tok, length, log_z), chain.ChainInfo(jnp.ones((), bool), log_z, nan, parts.cause)


def conditional(ess_threshold: float, ancestor_fn=None) -> R.Resampling:
    """The resampling of a conditional SMC sweep: particle 0 (the retained reference) keeps
    its slot, the others draw ancestors i.i.d. (multinomially, in i.i.d. order) from the
    weights of all ``N``: the conditional law the particle Gibbs kernel needs. With
    ``ancestor_fn(key, particles, kv, tokens, old_length) -> int32`` (ancestor sampling),
    particle 0's ancestor is redrawn at each resampling instead of kept."""

    def select(k_res, k_anc, t, cand: R.Candidates):
        lw = cand.particles.logw
        ref = jnp.zeros((), jnp.int32) if ancestor_fn is None else ancestor_fn(
            k_anc, cand.particles, cand.kv, cand.tokens, cand.old_length)
        idx = R.iid_multinomial(k_res, lw, lw.shape[0]).at[0].set(ref)
        return idx, jnp.full_like(lw, R.log_mean_exp(lw))

    # The reference is pinned to slot 0, so survivors do not keep their slots.
    return R.Resampling(float(ess_threshold), select, R.take_rows, False)


def ancestor_log_weights(key, setup: E.Setup, params, parts: E.Particles, kv: E.KVState,
                         tokens, old_length, ref_tokens, ref_length):
    """``log w̃_i = log W_i + log gamma_T(x^i_{<=t}, x'_{>t}) - log gamma_t(x^i_{<=t})``.

    Args:
        parts: the population right after step ``t``'s proposal (``logw`` = ``log W``).
        kv: the LM state before step ``t``'s tokens are fed.
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
        p, kv, pend_tok, pend_len, lq_sum, s = c
        kv = E.advance_lm(setup, params, kv, pend_tok, pend_len, ~p.done)
        pos = jnp.minimum(p.length, ref_tokens.shape[0] - 1)
        force = (p.length < ref_length, forced_tok[jnp.arange(n), pos])
        new, tok, q = E.propose(jax.random.fold_in(key, s), setup, p, kv.logprobs, s,
                                force=force, record=True)
        lq = jnp.take_along_axis(q, tok[:, None], 1)[:, 0]
        # An observed (not drawn) token has no proposal term; a token q cannot produce has
        # already made the weight -inf.
        lq_sum = lq_sum + jnp.where(~p.done & jnp.isfinite(lq), lq, 0.0)
        return new, kv, tok, p.length, lq_sum, s + 1

    t1 = jnp.max(parts.length).astype(jnp.int32)
    p, _, _, _, lq_sum, _ = jax.lax.while_loop(
        cond, body, (parts, kv, tokens, old_length, jnp.zeros((n,), jnp.float32), t1))
    p = E.apply_final(jax.random.fold_in(key, 1 << 30), setup, p)
    ref_finished = start_done[0]  # particle 0 follows the reference
    valid = jnp.where(ref_finished, start_done,
                      ~start_done & p.done & (p.length == ref_length))
    return jnp.where(valid, p.logw + lq_sum, -jnp.inf)


def build_kernel(setup: E.Setup, config: RunConfig, params, ess_threshold: float,
                 ancestor_sampling: bool = True):
    """``step(key, state) -> (state, info)``: one conditional SMC sweep around the reference.

    ``info.accepted`` is True when the new reference differs from the old one.
    """
    n = config.num_particles

    def step(key, state: chain.ChainState):
        k_sweep, k_pick = jax.random.split(key)
        st = conditional_sweep(k_sweep, setup, config, params, state.tokens, state.length,
                               ess_threshold, ancestor_sampling)
        parts, log_z, nan = st.particles, R.log_mean_exp(st.particles.logw), st.kv.nan
        tok, length, _ = chain.pick(k_pick, parts)
        changed = ~chain.same_sequence(tok, length, state.tokens, state.length)
        return chain.ChainState(tok, length, log_z), chain.ChainInfo(changed, log_z, nan, parts.cause)

    return step


def conditional_sweep(key, setup: E.Setup, config: RunConfig, params, ref_tokens, ref_length,
                      ess_threshold: float, ancestor_sampling: bool = True) -> smc.SMCState:
    """The conditional SMC kernel: one sweep of ``N`` particles in which particle 0 is the
    retained sequence ``x'`` (``ref_tokens int32[T]``, ``ref_length``), ``final`` applied.

    Particle 0's tokens are forced to ``x'`` (weighted as any particle's); at every
    resampling the others draw ancestors i.i.d. from all ``N`` weights and particle 0 keeps
    its own (or, with ``ancestor_sampling``, redraws it by PGAS). Drawing one final particle
    ``∝ w`` gives the next state of the particle Gibbs chain, which leaves the posterior
    invariant: if ``x' ~ pi``, that draw is ``~ pi`` too (for every ``N >= 1``).

    Returns:
        The final [SMCState][ppl.inference.smc.SMCState] (particles, histories, LM state).
    """
    n = config.num_particles
    tokens = jnp.broadcast_to(ref_tokens, (n,) + ref_tokens.shape)
    upto = jnp.where(jnp.arange(n) == 0, ref_length, 0)

    def anc_fn(k, parts, kv, toks, old_len):
        lw = ancestor_log_weights(k, setup, params, parts, kv, toks, old_len, ref_tokens,
                                  ref_length)
        # All candidates invalid cannot happen (particle 0 itself is valid), but keep the
        # reference's own ancestor rather than a uniform draw if it ever did.
        return jnp.where(jnp.isfinite(jax.nn.logsumexp(lw)),
                         jax.random.categorical(k, lw), 0).astype(jnp.int32)

    strategy = conditional(ess_threshold, anc_fn if ancestor_sampling else None)
    kernel = smc.build_kernel(setup, config, params, strategy,
                              smc.ProposalHooks(forced=(tokens, upto)))
    return smc.run_loop(key, setup, config, params, kernel)


def make_runner(setup: E.Setup, config: RunConfig, options: GibbsOptions):
    """``chains`` particle Gibbs chains of ``steps`` conditional sweeps each."""
    first = R.adaptive(options.resampling, options.ess_threshold)

    def init_fn(key, params):
        return init(key, setup, config, params, first)

    def step_fn(key, state, params):
        return build_kernel(setup, config, params, options.ess_threshold,
                            options.ancestor_sampling)(key, state)

    return chain.make_chain_runner(setup, config, options, init_fn, step_fn)


def _validate(setup: E.Setup, config: RunConfig, options: GibbsOptions) -> None:
    if config.num_particles < 2:
        raise OptionError(f"particle Gibbs needs particles >= 2 (one is the reference), got "
                          f"{config.num_particles}.")
    chain.require_token_only(setup)


BACKEND = Backend(
    name="particle_gibbs",
    family="mcmc",
    options=GibbsOptions,
    make_runner=make_runner,
    to_result=chain.chain_result("particle_gibbs", unbiased_evidence=False),
    rows=lambda config, options: config.num_particles * options.chains,
    validate=_validate,
    summary="particle Gibbs (conditional SMC) with ancestor sampling",
)


# ---- method="csmc": one conditional sweep around a sequence the user gives ------------------

def _check_retained(name, value):
    if value is None or isinstance(value, str):
        return value
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - reported below
        arr = None
    if arr is None or arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise OptionError(f"{name} must be a text or a non-empty list of token ids, got "
                          f"{value!r}.")
    return arr.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class CSMCOptions(smc.ResamplingOptions):
    """Options of ``method="csmc"``: one conditional SMC sweep around ``retained``.

    Attributes:
        retained: the retained sequence, kept as particle 0: a text (encoded with the model's
            tokenizer, EOS appended when it is shorter than ``max_tokens``) or token ids (a
            complete sequence of the program: ending at EOS or ``max_tokens`` long).
        ancestor_sampling: redraw the retained particle's ancestor at every resampling (PGAS).
    """

    retained: Any = option(None, _check_retained)
    ancestor_sampling: bool = option(True, check_bool)

    def cache_key(self) -> tuple:
        # The retained sequence is an input of the compiled sweep, not part of its key.
        return tuple((k, "retained" if k == "retained" else v) for k, v in super().cache_key())


def retained_tokens(setup: E.Setup, retained) -> tuple[np.ndarray, int]:
    """``(int32[max_tokens] padded, length)`` of the ``retained=`` option.

    Raises:
        OptionError: missing, or longer than the program's ``max_tokens``.
    """
    if retained is None:
        raise OptionError("method='csmc' needs retained=: the sequence kept as particle 0 (a "
                          "text or token ids), e.g. a sample of an earlier run.")
    if isinstance(retained, str):
        ids = list(setup.lm.vocab.encode(retained))
        if len(ids) < setup.max_tokens:
            ids.append(int(setup.lm.eos_token_id))
    else:
        ids = [int(i) for i in retained]
    if len(ids) > setup.max_tokens:
        raise OptionError(f"retained has {len(ids)} tokens but the program generates at most "
                          f"max_tokens={setup.max_tokens}.")
    if any(i < 0 or i >= setup.lm.vocab_size for i in ids):
        raise OptionError(f"retained has token ids outside the vocabulary [0, "
                          f"{setup.lm.vocab_size}).")
    out = np.zeros((setup.max_tokens,), np.int32)
    out[: len(ids)] = ids
    return out, len(ids)


def _csmc_params(setup: E.Setup, options: CSMCOptions):
    tok, length = retained_tokens(setup, options.retained)
    return setup.lm.params, jnp.asarray(tok), jnp.asarray(length, jnp.int32)


def _csmc_runner(setup: E.Setup, config: RunConfig, options: CSMCOptions):
    def runner(key, params):
        lm_p, ref_tok, ref_len = params
        k_sweep, k_pick = jax.random.split(key)
        st = conditional_sweep(k_sweep, setup, config, lm_p, ref_tok, ref_len,
                               options.ess_threshold, options.ancestor_sampling)
        _, _, k = chain.pick(k_pick, st.particles)
        return st.particles, smc.population_info(st, {
            "sampled_index": k, "conditional_sweeps_log_mean_z": R.log_mean_exp(st.particles.logw),
            "retained_tokens": ref_tok, "retained_length": ref_len})

    return runner


def _csmc_result(setup, config, options, parts, info):
    res = smc.population_result("csmc")(setup, config, options, parts, info)
    res.log_evidence = None  # the sweep contains the retained sequence: not unbiased
    ref_len = int(res.extras["retained_length"])
    # Slot 0 always holds the retained particle; a token it got at a step >= the retained
    # length was a free draw: the retained sequence had not ended (with ancestor sampling
    # particle 0 may legitimately become another complete sequence, so its final tokens
    # are not compared).
    slot0 = res.extras["history"]["tokens"][:, 0]
    own = res.ancestors[:, 0] == 0  # not replaced by another (finished) particle this step
    if np.any((slot0 >= 0) & own & (np.arange(len(slot0)) >= ref_len)):
        raise OptionError("The retained sequence is not a complete sequence of the program: "
                          "particle 0 went on after it. Give the tokens up to and including "
                          "EOS (or exactly max_tokens of them).")
    k = int(res.extras["sampled_index"])
    res.extras["sample"] = {"index": k, "text": res.texts[k],
                            "tokens": res.tokens[k, : res.lengths[k]]}
    return res


def _csmc_validate(setup: E.Setup, config: RunConfig, options: CSMCOptions) -> None:
    chain.require_token_only(setup)
    retained_tokens(setup, options.retained)


CSMC_BACKEND = Backend(
    name="csmc",
    family="mcmc",
    options=CSMCOptions,
    make_runner=_csmc_runner,
    to_result=_csmc_result,
    params=_csmc_params,
    validate=_csmc_validate,
    summary="one conditional SMC sweep around a retained sequence (the particle Gibbs kernel)",
)
