"""Compiles a backend's runner once per (program, method, shape), runs it, builds the Result."""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ppl.inference import _engine as E
from ppl.result import InferenceError, Result, normalized

__all__ = ["as_key", "check_memory", "estimate_bytes", "run_population", "compiled"]


def as_key(seed) -> jax.Array:
    """A PRNG key from an int seed or a key (typed or raw ``uint32[2]``)."""
    if isinstance(seed, (int, np.integer)):
        return jax.random.key(int(seed))
    seed = jnp.asarray(seed) if not isinstance(seed, jax.Array) else seed
    if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return seed
    if seed.shape == (2,) and seed.dtype == jnp.uint32:
        return jax.random.wrap_key_data(seed)
    raise TypeError(f"seed must be an int or a PRNG key, got {type(seed).__name__} {seed.shape}.")


def _tree_bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def estimate_bytes(setup: E.Setup, num_rows: int) -> dict:
    """Up-front memory estimate: weights + KV cache rows + per-step buffers (bytes)."""
    lm = setup.lm
    weights = _tree_bytes(lm.params)
    kv = int(lm.init_cache_bytes(setup.max_len)) * num_rows * setup.num_contexts
    step = num_rows * setup.num_contexts * lm.vocab_size * 4 * 4  # logprobs, cdf, masks
    return {"weights": weights, "kv_cache": kv, "step_buffers": step, "total": weights + kv + step}


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(setup: E.Setup, num_rows: int, what: str = "particles") -> dict:
    """Refuses, before allocating, a run whose estimate exceeds available host memory.

    Only host (CPU) memory is checked; accelerators report their own out-of-memory errors.
    """
    est = estimate_bytes(setup, num_rows)
    avail = _available_bytes()
    on_cpu = jax.default_backend() == "cpu"
    if avail is not None and on_cpu and est["total"] > 0.9 * avail:
        gib = 2.0**30
        per_row = est["kv_cache"] / max(num_rows, 1)
        fit = int(max(0.9 * avail - est["weights"] - est["step_buffers"], 0) // max(per_row, 1))
        raise MemoryError(
            f"This run needs about {est['total'] / gib:.2f} GiB (weights {est['weights'] / gib:.2f} "
            f"GiB + KV cache {est['kv_cache'] / gib:.2f} GiB for {num_rows} {what} x "
            f"{setup.max_len} positions + step buffers {est['step_buffers'] / gib:.2f} GiB) but only "
            f"{avail / gib:.2f} GiB is available. Lower the number of {what} (at most ~{fit} fit) "
            f"or max_tokens, or load the model with dtype='bfloat16'."
        )
    return est


def compiled(setup: E.Setup, cache_key: tuple, make: Callable[[], Callable], key, params):
    """``(executable, compile_seconds)``: ``jax.jit(make())`` compiled once per cache_key."""
    store = setup.__dict__.setdefault("_executables", {})
    if cache_key in store:
        return store[cache_key], 0.0
    t0 = time.perf_counter()
    exe = jax.jit(make()).lower(key, params).compile()
    dt = time.perf_counter() - t0
    store[cache_key] = exe
    return exe, dt


def run_population(method: str, program, seed, num_particles: int, make_runner, cache_key: tuple,
                   *, check_mem: bool = True) -> Result:
    """Runs a particle backend end to end and returns its :class:`Result`.

    Raises:
        InferenceError: every particle was killed (with the condition that killed most), or
            the model produced NaN log-probabilities.
    """
    t_start = time.perf_counter()
    setup = E.prepare(program)
    if check_mem:
        check_memory(setup, num_particles)
    key = as_key(seed)
    params = setup.lm.params
    exe, t_compile = compiled(setup, (method, num_particles, setup.progress_fn is not None) + cache_key,
                              lambda: make_runner(setup, num_particles), key, params)
    t0 = time.perf_counter()
    state = exe(key, params)
    state = jax.block_until_ready(state)
    t_run = time.perf_counter() - t0
    res = build_result(method, setup, state)
    res.timings = {"compile": t_compile, "run": t_run, "total": time.perf_counter() - t_start}
    raise_if_failed(setup, res, state)
    return res


def build_result(method: str, setup: E.Setup, state) -> Result:
    parts = state.particles
    tokens = np.asarray(parts.tokens)
    lengths = np.asarray(parts.length)
    logw = np.asarray(parts.logw, np.float64)
    weights, log_z = normalized(logw)
    steps = int(state.t)
    texts = [setup.decode(row[:n]) for row, n in zip(tokens, lengths)]
    res = Result(
        method=method,
        tokens=tokens,
        lengths=lengths,
        texts=texts,
        log_weights=logw,
        weights=weights,
        log_evidence=log_z,
        ess=np.asarray(state.ess)[:steps],
        ancestors=np.asarray(state.ancestors)[:steps],
        resampled=np.asarray(state.resampled)[:steps],
        timings={},
        num_steps=steps,
        states=jax.tree.map(np.asarray, parts.state),
    )
    res.extras["causes"] = np.asarray(parts.cause)
    return res


def raise_if_failed(setup: E.Setup, res: Result, state) -> None:
    if bool(np.asarray(state.lm.nan)):
        raise InferenceError(
            "The language model produced NaN log-probabilities for a live particle. Check the "
            "checkpoint (weights with NaN/inf) or use dtype='float32' instead of a half type."
        )
    if not np.isfinite(res.log_evidence):
        causes = res.extras.get("causes", np.array([]))
        names = setup.condition_names
        counts = {names[c]: int(np.sum(causes == c)) for c in range(len(names)) if np.any(causes == c)}
        if counts:
            worst = max(counts, key=counts.get)
            detail = (f" The condition that killed most particles: {worst!r} "
                      f"({counts[worst]} of {res.num_particles}); all: {counts}.")
        else:
            detail = " No condition failed: the weights themselves were zero (check factors/observes)."
        raise InferenceError(
            f"No particle satisfied the program's constraints: all {res.num_particles} particles "
            f"have zero weight.{detail} Relax the constraints, raise max_tokens, or use more "
            "particles."
        )
