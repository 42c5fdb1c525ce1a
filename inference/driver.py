"""Runs a backend: checks memory, compiles once per key (see [ppl.inference.executables][]),
runs, builds the [Result][ppl.Result] and reports failures with their cause.

The walk from ``ppl.infer`` to the compiled loop::

    ppl.infer(program, method, particles, seed, **options)
      backend  = registry.get(method)                        # a Backend record
      options  = backend.options.build(method, options)      # frozen dataclass, validated
      setup    = engine.prepare(program)                     # frozen static facts
      config   = RunConfig(particles, mesh, progress)        # this run
      driver.run(backend, setup, config, options, key)
        backend.validate(setup, config, options)
        execute: check_memory -> compiled(make_runner(...)) -> runner(key, params)
                 -> (state, info) -> backend.to_result(...) -> raise_if_failed
"""

from __future__ import annotations

import numbers
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ppl._host import reraise_host_error
from ppl.errors import InferenceError, MemoryRefusal
from ppl.inference import engine as E
from ppl.inference import executables
from ppl.inference.base import Backend, Options, RunConfig
from ppl.models.base import bound_params
from ppl.result import Result

__all__ = ["as_key", "bind_lm_params", "check_memory", "compile_and_run", "compiled",
           "estimate_bytes", "execute", "raise_if_failed", "run"]


def as_key(seed) -> jax.Array:
    """A PRNG key from an int seed in ``[0, 2**63)`` or a key (typed, or raw ``uint32[2]``).

    Raises:
        TypeError: a seed of another type (a string, a float, a bool, None).
        ValueError: an int seed out of range.
    """
    if isinstance(seed, bool) or seed is None or isinstance(seed, (str, bytes, float)):
        raise TypeError(f"seed must be an int or a JAX PRNG key, got {seed!r} "
                        f"({type(seed).__name__}); e.g. seed=0 or seed=jax.random.key(0).")
    if isinstance(seed, numbers.Integral):
        if not 0 <= int(seed) < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {seed}.")
        return jax.random.key(int(seed))
    if isinstance(seed, (jax.Array, np.ndarray)):
        if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
            if seed.shape != ():
                raise TypeError(f"seed must be a single PRNG key, got a batch of shape {seed.shape}.")
            return seed
        if seed.shape == (2,) and seed.dtype == jnp.uint32:
            return jax.random.wrap_key_data(jnp.asarray(seed))
    raise TypeError(f"seed must be an int or a JAX PRNG key, got {type(seed).__name__} "
                    f"{getattr(seed, 'shape', '')}; e.g. seed=0 or seed=jax.random.key(0).")


def _tree_bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


# Calibrated on this project's scaling benchmark (docs/benchmarks.md, "Scaling and memory"):
# beyond its KV cache, each LM row's peak memory held ~9.5 (GPT-2 small) to ~12 (tiny model)
# vocabulary-sized float32 buffers (log-probabilities, cumulative sums for sampling, masks,
# exponentials, XLA temporaries), and a run's fixed cost beyond the weights (XLA's compiler
# arenas and the executable, the tokenizer) was ~560-570 MiB on both models.
STEP_BUFFERS_PER_VOCAB_ENTRY = 12 * 4  # bytes per row per vocabulary entry
RUNTIME_BYTES = 576 * 2**20


def estimate_bytes(setup: E.Setup, num_rows: int, step_rows: int | None = None) -> dict:
    """Up-front memory estimate in bytes, before anything is allocated.

    ``total = weights + kv_cache + step_buffers + runtime`` where ``kv_cache`` is the exact
    size of ``num_rows x contexts`` static KV caches of ``max_len`` positions,
    ``step_buffers = step_rows x contexts x V x 48`` (twelve vocabulary-sized float32 buffers
    per row; ``step_rows`` defaults to ``num_rows``) and ``runtime`` a fixed 576 MiB
    (compiler, executable, tokenizer), both calibrated on the scaling benchmark.
    """
    lm = setup.lm
    weights = _tree_bytes(lm.params)
    rows = num_rows * setup.num_contexts
    srows = (num_rows if step_rows is None else step_rows) * setup.num_contexts
    kv = int(lm.init_cache_bytes(setup.max_len)) * rows
    step = srows * lm.vocab_size * STEP_BUFFERS_PER_VOCAB_ENTRY
    return {"weights": weights, "kv_cache": kv, "step_buffers": step, "runtime": RUNTIME_BYTES,
            "total": weights + kv + step + RUNTIME_BYTES}


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(setup: E.Setup, num_rows: int, step_rows: int | None = None,
                 what: str = "particles") -> dict:
    """Refuses, before allocating, a run whose estimate exceeds available host memory.

    Only host (CPU) memory is checked; accelerators report their own out-of-memory errors.

    Raises:
        MemoryRefusal: the estimate exceeds 90% of the available memory.
    """
    est = estimate_bytes(setup, num_rows, step_rows)
    avail = _available_bytes()
    on_cpu = jax.default_backend() == "cpu"
    if avail is not None and on_cpu and est["total"] > 0.9 * avail:
        gib = 2.0**30
        # KV cache and step buffers both grow with the number of rows.
        per_row = (est["kv_cache"] + est["step_buffers"]) / max(num_rows, 1)
        fit = int(max(0.9 * avail - est["weights"] - est["runtime"], 0) // max(per_row, 1))
        raise MemoryRefusal(
            f"This run needs about {est['total'] / gib:.2f} GiB (weights {est['weights'] / gib:.2f} "
            f"GiB + KV cache {est['kv_cache'] / gib:.2f} GiB for {num_rows} {what} x "
            f"{setup.max_len} positions + step buffers {est['step_buffers'] / gib:.2f} GiB + "
            f"runtime {est['runtime'] / gib:.2f} GiB) but only "
            f"{avail / gib:.2f} GiB is available. Lower the number of {what} (at most ~{fit} fit) "
            f"or max_tokens, or load the model with dtype='bfloat16'."
        )
    return est


def _lm_part(setup: E.Setup, params):
    """The LM parameters inside a runner's ``params`` argument: the whole argument, or the
    first element of a tuple (backends with parameters of their own pass ``(lm, own)``)."""
    lm_params = setup.lm.params
    if params is lm_params:
        return lambda p: p
    if isinstance(params, tuple) and params and params[0] is lm_params:
        return lambda p: p[0]
    return None


def bind_lm_params(setup: E.Setup, runner: Callable, params=None) -> Callable:
    """``runner(key, params)`` with ``setup.lm.params`` reading the traced ``params`` while
    it runs (see [bound_params][ppl.models.base.bound_params]).

    Under ``jax.jit``/``vmap`` every read of ``program.lm.params`` inside program code is then
    a read of the traced argument instead of a constant captured at trace time (what
    [compiled][ppl.inference.driver.compiled] does for ``ppl.infer``; tests that jit or vmap
    runners themselves use it). ``params`` (an example argument) says where the LM's part is;
    by default the whole argument.
    """
    part = (lambda p: p) if params is None else _lm_part(setup, params)
    if part is None:
        return runner
    lm = setup.lm

    def bound(key, traced):
        with bound_params(lm, part(traced)):
            return runner(key, traced)

    return bound


def _setup_key(setup: E.Setup) -> tuple:
    return (executables.program_key(setup.program), executables.fingerprint(setup.lm),
            setup.prompt_ids, setup.max_tokens, setup.max_len)


def compiled(setup: E.Setup, key_parts: tuple, make: Callable[[], Callable], key, params):
    """``(executable, compile_seconds)``: ``jax.jit(make())`` compiled once per key.

    The key is the program's fingerprint and static facts, ``key_parts`` (backend, options,
    config), and the structure/shapes/dtypes of ``key`` and ``params``. ``params`` is an
    argument of the executable, never a constant baked into it: when it holds the program's
    LM parameters, program code reading ``self.lm.params`` reads the argument too, so
    assigning new arrays of the same shapes to ``program.lm.params`` reruns the cached
    executable with the new values (property tests rely on it).
    """
    cache_key = (_setup_key(setup), key_parts, executables.signature(params),
                 executables.signature(key))
    t0 = time.perf_counter()

    def compile_fn():
        fn = bind_lm_params(setup, make(), params)
        try:
            return jax.jit(fn).lower(key, params).compile()
        except Exception as e:
            reraise_host_error(e)
            raise

    exe, fresh = executables.lookup_or_compile(cache_key, compile_fn)
    return exe, (time.perf_counter() - t0 if fresh else 0.0)


def _call(exe, *args):
    try:
        return jax.block_until_ready(exe(*args))
    except Exception as e:  # a user exception in a host callback: raise it as itself
        reraise_host_error(e)
        raise


def compile_and_run(setup: E.Setup, key_parts: tuple, make: Callable[[], Callable], key, params,
                    rows: int, step_rows: int | None = None):
    """Memory check, [compiled][ppl.inference.driver.compiled], run: the outputs."""
    check_memory(setup, rows, step_rows)
    exe, _ = compiled(setup, key_parts, make, key, params)
    return _call(exe, key, params)


def execute(backend: Backend, setup: E.Setup, config: RunConfig, options: Options, key) -> Result:
    """Compiles (once per key) and runs ``backend``'s runner; its Result, failures raised.

    Raises:
        MemoryRefusal: the estimated memory exceeds what is available.
        InferenceError: every particle was killed (with the condition that killed most), or
            the model produced NaN log-probabilities.
    """
    t_start = time.perf_counter()
    rows = backend.rows(config, options)
    step_rows = None if backend.step_rows is None else backend.step_rows(config, options)
    check_memory(setup, rows, step_rows)
    params = backend.params(setup, options)
    exe, t_compile = compiled(setup, (backend.name, options.cache_key(), config.cache_key()),
                              lambda: backend.make_runner(setup, config, options), key, params)
    t0 = time.perf_counter()
    state, info = _call(exe, key, params)
    t_run = time.perf_counter() - t0
    res = backend.to_result(setup, config, options, state, info)
    res.timings = {"compile": t_compile, "run": t_run, "total": time.perf_counter() - t_start}
    raise_if_failed(setup, res, bool(np.asarray(info.nan)))
    return res


def run(backend: Backend, setup: E.Setup, config: RunConfig, options: Options, key) -> Result:
    """Validates, then runs ``backend`` (its own ``run`` for composed backends)."""
    backend.validate(setup, config, options)
    if backend.run is not None:
        return backend.run(setup, config, options, key)
    return execute(backend, setup, config, options, key)


def raise_if_failed(setup: E.Setup, res: Result, nan: bool) -> None:
    """Raises [InferenceError][ppl.InferenceError] for NaN log-probabilities or a run in which
    no particle survived (naming the condition that killed most of them)."""
    if nan:
        raise InferenceError(
            "The language model produced NaN log-probabilities for a live particle. Check the "
            "checkpoint (weights with NaN/inf) or use dtype='float32' instead of a half type."
        )
    log_z = res.log_evidence
    if log_z is None:
        log_z = res.extras.get("conditional_sweeps_log_mean_z", 0.0)
    if not np.isfinite(log_z):
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
