"""Compiles a backend's runner once per (program, method, shape), runs it, builds the Result."""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ppl.inference import _engine as E
from ppl.result import InferenceError, Result, normalized

__all__ = ["as_key", "bind_lm_params", "check_memory", "estimate_bytes", "run_population", "compiled"]


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


# Calibrated on this project's scaling benchmark (docs/benchmarks.md, "Scaling and memory"):
# beyond its KV cache, each LM row's peak memory held ~9.5 (GPT-2 small) to ~12 (tiny model)
# vocabulary-sized float32 buffers (log-probabilities, cumulative sums for sampling, masks,
# exponentials, XLA temporaries), and a run's fixed cost beyond the weights (XLA's compiler
# arenas and the executable, the tokenizer) was ~560-570 MiB on both models.
STEP_BUFFERS_PER_VOCAB_ENTRY = 12 * 4  # bytes per row per vocabulary entry
RUNTIME_BYTES = 576 * 2**20


def estimate_bytes(setup: E.Setup, num_rows: int) -> dict:
    """Up-front memory estimate in bytes, before anything is allocated.

    ``total = weights + kv_cache + step_buffers + runtime`` where ``kv_cache`` is the exact
    size of ``num_rows x contexts`` static KV caches of ``max_len`` positions,
    ``step_buffers = rows x V x 48`` (twelve vocabulary-sized float32 buffers per row) and
    ``runtime`` a fixed 576 MiB (compiler, executable, tokenizer), both calibrated on the
    scaling benchmark.
    """
    lm = setup.lm
    weights = _tree_bytes(lm.params)
    rows = num_rows * setup.num_contexts
    kv = int(lm.init_cache_bytes(setup.max_len)) * rows
    step = rows * lm.vocab_size * STEP_BUFFERS_PER_VOCAB_ENTRY
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


def check_memory(setup: E.Setup, num_rows: int, what: str = "particles") -> dict:
    """Refuses, before allocating, a run whose estimate exceeds available host memory.

    Only host (CPU) memory is checked; accelerators report their own out-of-memory errors.
    """
    est = estimate_bytes(setup, num_rows)
    avail = _available_bytes()
    on_cpu = jax.default_backend() == "cpu"
    if avail is not None and on_cpu and est["total"] > 0.9 * avail:
        gib = 2.0**30
        # KV cache and step buffers both grow with the number of rows.
        per_row = (est["kv_cache"] + est["step_buffers"]) / max(num_rows, 1)
        fit = int(max(0.9 * avail - est["weights"] - est["runtime"], 0) // max(per_row, 1))
        raise MemoryError(
            f"This run needs about {est['total'] / gib:.2f} GiB (weights {est['weights'] / gib:.2f} "
            f"GiB + KV cache {est['kv_cache'] / gib:.2f} GiB for {num_rows} {what} x "
            f"{setup.max_len} positions + step buffers {est['step_buffers'] / gib:.2f} GiB + "
            f"runtime {est['runtime'] / gib:.2f} GiB) but only "
            f"{avail / gib:.2f} GiB is available. Lower the number of {what} (at most ~{fit} fit) "
            f"or max_tokens, or load the model with dtype='bfloat16'."
        )
    return est


def _signature(params) -> tuple:
    """Structure, shapes and dtypes of ``params``: what an executable is specialised on."""
    leaves, treedef = jax.tree.flatten(params)
    return (treedef,) + tuple(
        (tuple(np.shape(x)), str(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype))
        for x in leaves)


def bind_lm_params(setup: E.Setup, runner: Callable) -> Callable:
    """``runner(key, params)`` with ``setup.lm.params`` bound to ``params`` while it runs.

    Under ``jax.jit``/``vmap`` this makes every read of ``program.lm.params`` inside program
    code a read of the traced argument instead of a constant captured at trace time (what
    :func:`compiled` does for ``ppl.infer``; tests that jit or vmap runners themselves use it).
    """
    lm = setup.lm

    def bound(key, params):
        saved = lm.params
        object.__setattr__(lm, "params", params)  # LMs may be frozen dataclasses
        try:
            return runner(key, params)
        finally:
            object.__setattr__(lm, "params", saved)

    return bound


def compiled(setup: E.Setup, cache_key: tuple, make: Callable[[], Callable], key, params):
    """``(executable, compile_seconds)``: ``jax.jit(make())`` compiled once per cache_key and
    per structure/shapes/dtypes of ``params``.

    ``params`` is an argument of the executable, never a constant baked into it. When it is the
    program's LM parameters (``setup.lm.params``), the LM's ``params`` attribute is bound to the
    traced argument while the runner is traced, so program code that reads tables from
    ``self.lm.params`` (e.g. a per-token potential or a proposal bias kept there) also reads
    inputs. Assigning new arrays of the same shapes to ``program.lm.params`` therefore reruns
    the cached executable with the new values, without recompiling (property tests rely on it).
    The same holds when ``params`` is a tuple whose first element is the LM's parameters.
    """
    store = setup.__dict__.setdefault("_executables", {})
    cache_key = cache_key + (_signature(params),)
    if cache_key in store:
        return store[cache_key], 0.0
    t0 = time.perf_counter()
    fn = make()
    lm = setup.lm
    lm_params = getattr(lm, "params", None)
    # The LM parameters are the whole argument, or the first element of a tuple argument
    # (backends with parameters of their own, e.g. a learned proposal, pass (lm, own)).
    whole = params is lm_params
    first = isinstance(params, tuple) and len(params) > 0 and params[0] is lm_params
    if whole or first:
        inner = fn

        def fn(key, traced_params):
            saved = lm.params
            traced_lm = traced_params if whole else traced_params[0]
            object.__setattr__(lm, "params", traced_lm)  # LMs may be frozen dataclasses
            try:
                return inner(key, traced_params)
            finally:
                object.__setattr__(lm, "params", saved)

    exe = jax.jit(fn).lower(key, params).compile()
    dt = time.perf_counter() - t0
    store[cache_key] = exe
    return exe, dt


def _mesh_key(mesh):
    return None if mesh is None else (tuple(d.id for d in mesh.devices.flat), mesh.axis_names)


def _drop_lm_buffers(out):
    """The runner's output without the KV cache and the last log-probabilities.

    Nothing on the host reads them; as outputs of the executable they made XLA allocate an
    output-side copy of the whole KV cache next to the loop's own (``memory_analysis()``:
    output size = the cache; see docs/benchmarks.md, "Scaling and memory").
    """
    if type(out) is tuple and len(out) == 2 and isinstance(out[1], dict):
        return (_drop_lm_buffers(out[0]), out[1])
    lm = getattr(out, "lm", None)
    if isinstance(lm, E.LMState):
        return out._replace(lm=lm._replace(cache=(), logprobs=jnp.zeros((0,), jnp.float32),
                                           hidden=None))
    return out


def run_population(method: str, program, seed, num_particles: int, make_runner, cache_key: tuple,
                   *, check_mem: bool = True, params=None) -> Result:
    """Runs a particle backend end to end and returns its :class:`Result`.

    ``make_runner(setup, n)`` returns ``runner(key, params)``; ``params`` defaults to the LM's
    parameters (a backend with its own parameters, e.g. a learned proposal, passes a pytree
    holding both). The runner returns a state with ``particles`` (an SMC state), or a pair
    ``(state, extras)`` whose dict of arrays is added to ``Result.extras``.

    Raises:
        InferenceError: every particle was killed (with the condition that killed most), or
            the model produced NaN log-probabilities.
    """
    t_start = time.perf_counter()
    setup = E.prepare(program)
    if check_mem:
        check_memory(setup, num_particles)
    key = as_key(seed)
    params = setup.lm.params if params is None else params
    def make():
        runner = make_runner(setup, num_particles)
        return lambda key, params: _drop_lm_buffers(runner(key, params))

    exe, t_compile = compiled(setup, (method, num_particles, setup.progress_fn is not None,
                                         _mesh_key(setup.mesh)) + cache_key, make, key, params)
    t0 = time.perf_counter()
    state = exe(key, params)
    state = jax.block_until_ready(state)
    t_run = time.perf_counter() - t0
    extras = {}
    if type(state) is tuple and len(state) == 2 and isinstance(state[1], dict):
        state, extras = state
    res = build_result(method, setup, state)
    res.extras.update({k: np.asarray(v) for k, v in extras.items()})
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
    if hasattr(state, "hist_tokens"):
        res.extras["history"] = {
            "tokens": np.asarray(state.hist_tokens)[:steps],
            "log_weights": np.asarray(state.hist_logw)[:steps],
        }
    res.extras["token_strings"] = setup.lm.vocab.token_strings
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
