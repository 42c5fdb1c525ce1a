"""Machinery the particle MCMC backends (PIMH, particle Gibbs) share.

A chain state holds one retained sequence (tokens, length) and the evidence estimate of the
sweep it came from. Each MCMC step runs a full SMC sweep (`sweep`, which reuses
[build_kernel][ppl.inference.smc.build_kernel] and [run_loop][ppl.inference.smc.run_loop]),
so one chain is a ``lax.scan`` over steps with a ``lax.while_loop`` inside; independent chains
are ``vmap``-ped. [make_chain_runner][ppl.inference._chain.make_chain_runner] builds that
runner and [chain_result][ppl.inference._chain.chain_result] the
[Result][ppl.Result]: the kept samples after burn-in, each with weight ``1 / #kept``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ppl import handlers
from ppl.errors import OptionError
from ppl.inference import engine as E
from ppl.inference import resampling as R
from ppl.inference import smc
from ppl.inference.base import RunConfig, check_count, option
from ppl.result import Result

__all__ = ["ChainOptions", "ChainState", "ChainInfo", "ChainSamples", "ChainRunInfo", "sweep",
           "pick", "same_sequence", "make_chain_runner", "chain_result", "require_token_only"]


@dataclasses.dataclass(frozen=True)
class ChainOptions(smc.ResamplingOptions):
    """Options of the particle MCMC backends (``resampling``/``ess_threshold`` apply to the
    sweeps).

    Attributes:
        steps: MCMC steps per chain (one SMC sweep each).
        burn_in: initial steps whose samples are discarded (``0 <= burn_in < steps``).
        chains: independent chains, run in parallel (vmapped).
    """

    steps: int = option(100, check_count, 1)
    burn_in: int = option(0, check_count, 0)
    chains: int = option(1, check_count, 1)

    def __post_init__(self):
        super().__post_init__()
        if self.burn_in >= self.steps:
            raise OptionError(f"burn_in must be in [0, steps), got burn_in={self.burn_in}, "
                              f"steps={self.steps}.")


class ChainState(NamedTuple):
    """One chain's state: the retained sequence and its sweep's evidence estimate.

    Attributes:
        tokens: ``int32[T]`` the retained sequence (padded after ``length``).
        length: ``int32`` its number of tokens.
        log_z: ``float32`` ``log Z_hat`` of the sweep that produced the retained sequence.
    """

    tokens: jax.Array
    length: jax.Array
    log_z: jax.Array


class ChainInfo(NamedTuple):
    """What one MCMC step reports.

    Attributes:
        accepted: the retained sequence changed (PIMH: the proposal was accepted).
        log_z: ``log Z_hat`` of this step's sweep.
        nan: the LM produced NaN for a live particle during the sweep.
        cause: the sweep's per-particle kill causes (``int32[N]``).
    """

    accepted: jax.Array
    log_z: jax.Array
    nan: jax.Array
    cause: jax.Array


class ChainSamples(NamedTuple):
    """Every chain's retained sequence after each step: ``tokens[C, S, T]``, ``lengths[C, S]``."""

    tokens: jax.Array
    lengths: jax.Array


class ChainRunInfo(NamedTuple):
    """What a chain runner reports: the initial sweep's and every step's [ChainInfo][ppl.inference._chain.ChainInfo]
    (leading axes ``[C]`` and ``[C, S]``)."""

    first: ChainInfo
    steps: ChainInfo

    @property
    def nan(self):
        return jnp.any(self.first.nan) | jnp.any(self.steps.nan)


def sweep(key, setup: E.Setup, config: RunConfig, params, resampling: R.Resampling,
          hooks: smc.ProposalHooks = smc.ProposalHooks()):
    """One SMC sweep to the end (``final`` applied): ``(particles, log Z_hat, lm NaN flag)``.

    ``log Z_hat = log mean_i exp(logw_i)`` (the SMC kernel resets weights to their mean at
    resampling, so this is the usual product-of-mean-weights estimate).
    """
    kernel = smc.build_kernel(setup, config, params, resampling, hooks)
    st = smc.run_loop(key, setup, config, params, kernel)
    parts = st.particles
    return parts, R.log_mean_exp(parts.logw), st.kv.nan


def pick(key, parts: E.Particles):
    """Draws one particle index ``k`` with probability ``w_k / Σ w`` (the final weights)."""
    k = jax.random.categorical(key, R.log_normalize(parts.logw))
    return parts.tokens[k], parts.length[k], k


def same_sequence(tok_a, len_a, tok_b, len_b):
    pos = jnp.arange(tok_a.shape[0])
    return (len_a == len_b) & jnp.all(jnp.where(pos < len_a, tok_a == tok_b, True))


def require_token_only(setup: E.Setup) -> None:
    """Raises [ProgramError][ppl.ProgramError] if ``init`` draws latents (``step`` is checked
    by the forcing handler while tracing). Replaying backends can only reproduce LM tokens."""
    t = setup.max_tokens

    def one(key):
        ctx = E.context(setup, key, handler=handlers.TokenOnly(), tokens=jnp.zeros((t,), jnp.int32),
                        length=jnp.zeros((), jnp.int32))
        return setup.program.init(ctx)

    jax.eval_shape(one, jax.random.key(0))


def make_chain_runner(setup: E.Setup, config: RunConfig, options: ChainOptions,
                      init_fn: Callable, step_fn: Callable):
    """``runner(key, params) -> (ChainSamples, ChainRunInfo)``: ``options.chains`` chains
    of ``options.steps`` MCMC steps each, vmapped.

    Args:
        init_fn: ``init_fn(key, params) -> (ChainState, ChainInfo)``.
        step_fn: ``step_fn(key, state, params) -> (ChainState, ChainInfo)``.
    """

    def one_chain(key, params):
        k0, k1 = jax.random.split(key)
        s0, info0 = init_fn(k0, params)

        def body(s, k):
            s, info = step_fn(k, s, params)
            return s, (s.tokens, s.length, info)

        _, (toks, lens, infos) = jax.lax.scan(body, s0, jax.random.split(k1, options.steps))
        return toks, lens, info0, infos

    def runner(key, params):
        toks, lens, info0, infos = jax.vmap(lambda k: one_chain(k, params))(
            jax.random.split(key, options.chains))
        return ChainSamples(toks, lens), ChainRunInfo(info0, infos)

    return runner


def _log_mean_exp(lz: np.ndarray) -> float:
    m = np.max(lz)
    return float(m + np.log(np.mean(np.exp(lz - m)))) if np.isfinite(m) else -np.inf


def chain_result(name: str, unbiased_evidence: bool):
    """``to_result`` of a chain backend.

    The samples are every chain's states after steps ``burn_in + 1 .. steps`` (weights
    uniform). ``log mean exp`` of all sweeps' ``log Z_hat`` (``[chains, steps + 1]``, the
    initial sweep first, in ``extras["chain_log_evidence"]``) is ``Result.log_evidence`` when
    the sweeps are independent and unbiased (PIMH); for conditional sweeps it is biased and
    goes to ``extras["conditional_sweeps_log_mean_z"]`` as a diagnostic, with
    ``log_evidence = None``. Extras also hold ``acceptance_rate``, ``accepted``
    (``[chains, steps]``) and ``chain_index`` (per sample).
    """

    def to_result(setup: E.Setup, config: RunConfig, options: ChainOptions,
                  samples: ChainSamples, info: ChainRunInfo) -> Result:
        burn_in, chains, steps = options.burn_in, options.chains, options.steps
        toks = np.asarray(samples.tokens)[:, burn_in:]
        lens = np.asarray(samples.lengths)[:, burn_in:]
        kept = steps - burn_in
        tokens = toks.reshape(chains * kept, -1)
        lengths = lens.reshape(-1)
        chain_lz = np.concatenate([np.asarray(info.first.log_z)[:, None],
                                   np.asarray(info.steps.log_z)], 1)
        log_ev = _log_mean_exp(chain_lz.astype(np.float64).reshape(-1))
        n = len(lengths)
        accepted = np.asarray(info.steps.accepted)
        res = Result(
            method=name,
            tokens=tokens,
            lengths=lengths,
            texts=[setup.decode_text(row[:k]) for row, k in zip(tokens, lengths)],
            log_weights=np.zeros(n),
            weights=np.full(n, 1.0 / n),
            log_evidence=log_ev if unbiased_evidence else None,
            ess=np.zeros((0,)),
            ancestors=np.zeros((0, n), np.int32),
            resampled=np.zeros((0,), bool),
            timings={},
            num_steps=steps,
        )
        res.extras.update(
            acceptance_rate=float(accepted.mean()),
            accepted=accepted,
            chain_log_evidence=chain_lz,
            chain_index=np.repeat(np.arange(chains), kept),
            causes=np.asarray(info.steps.cause)[:, -1].reshape(-1),
            token_strings=setup.lm.vocab.token_strings,
        )
        if not unbiased_evidence:
            res.extras["conditional_sweeps_log_mean_z"] = log_ev
        return res

    return to_result
