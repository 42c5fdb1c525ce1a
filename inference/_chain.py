"""Machinery the particle MCMC backends (PIMH, particle Gibbs) share.

A chain state holds one retained sequence (tokens, length) and the evidence estimate of the
sweep it came from. Each MCMC step runs a full SMC sweep (:func:`sweep`, which reuses
:func:`ppl.inference.smc.build_kernel` and :func:`~ppl.inference.smc.run_loop`), so one chain
is a ``lax.scan`` over steps with a ``lax.while_loop`` inside; independent chains are
``vmap``-ped. :func:`run_chains` compiles and runs that and builds the :class:`~ppl.Result`:
the kept samples after burn-in, each with weight ``1 / #kept``.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ppl.context import Context, ProgramError
from ppl.inference import _engine as E
from ppl.inference import driver, smc
from ppl.inference import resampling as R
from ppl.result import Result

__all__ = ["ChainState", "ChainInfo", "sweep", "pick", "same_sequence", "run_chains",
           "require_token_only"]


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


def sweep(key, setup: E.Setup, params, num_particles: int, **kernel_options):
    """One SMC sweep to the end (``final`` applied): ``(particles, log Z_hat, lm NaN flag)``.

    ``log Z_hat = log mean_i exp(logw_i)`` (the SMC kernel resets weights to their mean at
    resampling, so this is the usual product-of-mean-weights estimate).
    """
    kernel = smc.build_kernel(setup, params, **kernel_options)
    st = smc.run_loop(key, setup, params, num_particles, kernel)
    parts = st.particles
    return parts, E.log_mean_exp(parts.logw), st.lm.nan


def pick(key, parts: E.Particles):
    """Draws one particle index ``k`` with probability ``w_k / Σ w`` (the final weights)."""
    k = jax.random.categorical(key, R.log_normalize(parts.logw))
    return parts.tokens[k], parts.length[k], k


def same_sequence(tok_a, len_a, tok_b, len_b):
    pos = jnp.arange(tok_a.shape[0])
    return (len_a == len_b) & jnp.all(jnp.where(pos < len_a, tok_a == tok_b, True))


class _TokenOnly(Context):
    """A context that refuses non-token draws (used to vet ``init`` for replaying backends)."""

    def sample(self, dist, proposal=None):
        if getattr(dist, "lm_index", None) is None and getattr(proposal, "lm_index", None) is None:
            raise ProgramError(
                "This backend replays retained token sequences (particle Gibbs, rejuvenation), "
                "so a program may only sample LM tokens; its init() samples "
                f"{type(dist).__name__}. Use method='smc', 'is' or 'pimh' instead."
            )
        return super().sample(dist, proposal)


def require_token_only(setup: E.Setup) -> None:
    """Raises :class:`ProgramError` if ``init`` draws latents (``step`` is checked by the
    ``force`` hook while tracing). Replaying backends can only reproduce LM tokens."""
    t = setup.max_tokens

    def one(key):
        ctx = E._context(setup, key, cls=_TokenOnly, tokens=jnp.zeros((t,), jnp.int32),
                         length=jnp.zeros((), jnp.int32))
        return setup.program.init(ctx)

    jax.eval_shape(one, jax.random.key(0))


def run_chains(method: str, program, seed, *, particles: int, chains: int, steps: int,
               burn_in: int, init_fn: Callable, step_fn: Callable, cache_key: tuple,
               make_fns: Callable | None = None) -> Result:
    """Compiles and runs ``chains`` independent chains of ``steps`` MCMC steps each.

    Args:
        init_fn: ``init_fn(key, setup, params) -> (ChainState, ChainInfo)``.
        step_fn: ``step_fn(key, state, setup, params) -> (ChainState, ChainInfo)``.

    Returns:
        A :class:`Result` whose samples are every chain's states after steps
        ``burn_in + 1 .. steps`` (weights uniform), ``log_evidence = log mean exp`` of all
        sweeps' ``log Z_hat`` (see the backends for what it estimates), and extras
        ``acceptance_rate``, ``chain_log_evidence`` (``[chains, steps + 1]``, the initial
        sweep first), ``accepted`` (``[chains, steps]``), ``chain_index`` (per sample).
    """
    steps, burn_in, chains = int(steps), int(burn_in), int(chains)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    if not 0 <= burn_in < steps:
        raise ValueError(f"burn_in must be in [0, steps), got burn_in={burn_in}, steps={steps}.")
    if chains < 1:
        raise ValueError(f"chains must be >= 1, got {chains}.")
    t_start = time.perf_counter()
    setup = E.prepare(program)
    driver.check_memory(setup, particles * chains)
    key = driver.as_key(seed)
    params = setup.lm.params

    def make():
        def one_chain(key, params):
            k0, k1 = jax.random.split(key)
            s0, info0 = init_fn(k0, setup, params)

            def body(s, k):
                s, info = step_fn(k, s, setup, params)
                return s, (s.tokens, s.length, info)

            _, (toks, lens, infos) = jax.lax.scan(body, s0, jax.random.split(k1, steps))
            return toks, lens, info0, infos

        def runner(key, params):
            return jax.vmap(lambda k: one_chain(k, params))(jax.random.split(key, chains))

        return runner

    exe, t_compile = driver.compiled(setup, (method, particles, chains, steps,
                                             setup.progress_fn is not None) + cache_key,
                                     make, key, params)
    t0 = time.perf_counter()
    toks, lens, info0, infos = jax.block_until_ready(exe(key, params))
    t_run = time.perf_counter() - t0
    toks, lens = np.asarray(toks)[:, burn_in:], np.asarray(lens)[:, burn_in:]
    kept = steps - burn_in
    tokens = toks.reshape(chains * kept, -1)
    lengths = lens.reshape(-1)
    chain_lz = np.concatenate([np.asarray(info0.log_z)[:, None], np.asarray(infos.log_z)], 1)
    lz = chain_lz.astype(np.float64).reshape(-1)
    m = np.max(lz)
    log_ev = float(m + np.log(np.mean(np.exp(lz - m)))) if np.isfinite(m) else -np.inf
    n = len(lengths)
    accepted = np.asarray(infos.accepted)
    res = Result(
        method=method,
        tokens=tokens,
        lengths=lengths,
        texts=[setup.decode(row[:k]) for row, k in zip(tokens, lengths)],
        log_weights=np.zeros(n),
        weights=np.full(n, 1.0 / n),
        log_evidence=log_ev,
        ess=np.zeros((0,)),
        ancestors=np.zeros((0, n), np.int32),
        resampled=np.zeros((0,), bool),
        timings={"compile": t_compile, "run": t_run, "total": time.perf_counter() - t_start},
        num_steps=steps,
    )
    res.extras.update(
        acceptance_rate=float(accepted.mean()),
        accepted=accepted,
        chain_log_evidence=chain_lz,
        chain_index=np.repeat(np.arange(chains), kept),
        causes=np.asarray(infos.cause)[:, -1].reshape(-1),
        token_strings=setup.lm.vocab.token_strings,
    )
    nan = bool(np.any(np.asarray(info0.nan)) or np.any(np.asarray(infos.nan)))
    driver.raise_if_failed(setup, res, SimpleNamespace(lm=SimpleNamespace(nan=nan)))
    return res
