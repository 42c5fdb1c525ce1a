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
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ppl._host import reraise_host_error
from ppl.errors import InferenceError, MemoryRefusal
from ppl.inference import engine as E
from ppl.inference import executables
from ppl.inference.base import Backend, Options, Phases, RunConfig
from ppl.models.base import bound_params
from ppl.result import Result

__all__ = ["as_key", "bind_lm_params", "check_memory", "compile_and_run", "compiled",
           "estimate_bytes", "execute", "execute_many", "raise_if_failed", "run"]


def as_key(seed) -> jax.Array:
    """A PRNG key from an int seed in ``[0, 2**63)`` or a key (typed, or raw ``uint32[2]``).

    ``None`` is refused, not taken as "a fresh random seed": a run is a pure function of its
    seed, so randomness between runs is asked for explicitly (``seed=secrets.randbits(63)``).

    Raises:
        TypeError: a seed of another type (a string, a float, a bool, None).
        ValueError: an int seed out of range.
    """
    if seed is None:
        raise TypeError("seed=None is not a seed: a run is a pure function of its seed. Pass an "
                        "int (e.g. seed=0, or seed=secrets.randbits(63) for a fresh random run) "
                        "or a JAX PRNG key.")
    if isinstance(seed, bool) or isinstance(seed, (str, bytes, float)):
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
    size of the static KV cache: each context's prompt once (``kv_prompt``: ``prompt_len``
    positions) plus ``num_rows x contexts`` rows of generated positions (``kv_rows``:
    ``max_tokens`` each; the LM's [cache_layout_bytes][ppl.models.LanguageModel.cache_layout_bytes]),
    ``step_buffers = step_rows x contexts x V x 48`` (twelve vocabulary-sized float32 buffers
    per row; ``step_rows`` defaults to ``num_rows``) and ``runtime`` a fixed 576 MiB
    (compiler, executable, tokenizer), both calibrated on the scaling benchmark.
    """
    lm = setup.lm
    weights = _tree_bytes(lm.params)
    rows = num_rows * setup.num_contexts
    srows = (num_rows if step_rows is None else step_rows) * setup.num_contexts
    shared, per_row = (int(b) for b in lm.cache_layout_bytes(setup.prompt_len, setup.max_tokens))
    kv_prompt = shared * setup.num_contexts
    kv_rows = per_row * rows
    kv = kv_prompt + kv_rows
    step = srows * lm.vocab_size * STEP_BUFFERS_PER_VOCAB_ENTRY
    return {"weights": weights, "kv_cache": kv, "kv_prompt": kv_prompt, "kv_rows": kv_rows,
            "step_buffers": step, "runtime": RUNTIME_BYTES,
            "total": weights + kv + step + RUNTIME_BYTES}


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


#: (limit, usage) files of the process's memory cgroup: v2, then v1.
CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                 "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def _cgroup_available() -> int | None:
    """What a container's memory limit leaves (``limit - usage``), or None without a limit."""
    for limit_file, usage_file in CGROUP_FILES:
        try:
            with open(limit_file) as f:
                text = f.read().strip()
            if text == "max":
                return None
            limit = int(text)
            if limit >= 2**60:  # cgroup v1's "no limit"
                return None
            with open(usage_file) as f:
                usage = int(f.read().strip())
            return max(limit - usage, 0)
        except (OSError, ValueError):
            continue
    return None


def _available_bytes() -> int | None:
    """Host memory a run may use: the smaller of ``MemAvailable`` and what the container's
    cgroup limit leaves (a container sees the host's ``/proc/meminfo``)."""
    found = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(found) if found else None


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
        # The generated KV rows and the step buffers grow with the number of rows; the
        # prompt's KV is stored once.
        per_row = (est["kv_rows"] + est["step_buffers"]) / max(num_rows, 1)
        fixed = est["weights"] + est["runtime"] + est["kv_prompt"]
        fit = int(max(0.9 * avail - fixed, 0) // max(per_row, 1))
        raise MemoryRefusal(
            f"This run needs about {est['total'] / gib:.2f} GiB (weights {est['weights'] / gib:.2f} "
            f"GiB + prompt KV cache {est['kv_prompt'] / gib:.2f} GiB once for "
            f"{setup.num_contexts} prompt(s) of {setup.prompt_len} positions + generated KV "
            f"cache {est['kv_rows'] / gib:.2f} GiB for {num_rows} {what} x "
            f"{setup.max_tokens} positions + step buffers {est['step_buffers'] / gib:.2f} GiB + "
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
            setup.static_key())


_HITS = [0]


def _count_hit(event: str, **_) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _HITS[0] += 1


jax.monitoring.register_event_listener(_count_hit)


def _compile_interruptibly(compile_fn):
    """Runs ``compile_fn`` in a worker thread so that Ctrl-C in the main thread interrupts the
    wait (a ``KeyboardInterrupt`` raised here; the abandoned compilation finishes unused)."""
    if threading.current_thread() is not threading.main_thread():
        return compile_fn()
    box: dict = {}

    def work():
        try:
            box["exe"] = compile_fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    worker = threading.Thread(target=work, name="ppl-compile", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.05)
    if "error" in box:
        raise box["error"]
    return box["exe"]


def compiled(setup: E.Setup, key_parts: tuple, make: Callable[[], Callable], *args,
             donate: tuple = ()):
    """``(executable, (trace_seconds, compile_seconds, load_seconds))``: ``jax.jit(make())``
    compiled once per key (all 0 when this process already has it; a hit in JAX's persistent
    compilation cache still traces, compiles nothing and counts as a load).

    The key is the program's fingerprint and static facts, ``key_parts`` (backend, options,
    config, phase), and the structure/shapes/dtypes of the arguments ``args`` (never their
    values). The LM parameters are an argument of the executable, never constants baked into
    it: when an argument holds the program's LM parameters (the second, by convention),
    program code reading ``self.lm.params`` reads the argument too, so assigning new arrays of
    the same shapes to ``program.lm.params`` reruns the cached executable with the new values
    (property tests rely on it).
    """
    cache_key = (_setup_key(setup), key_parts, donate) + tuple(executables.signature(a) for a in args)
    spent = [0.0, 0.0, 0.0]

    def compile_fn():
        fn = make()
        if len(args) >= 2:
            part = _lm_part(setup, args[1])
            if part is not None:
                fn = _bind_at(setup.lm, fn, part)
        try:
            t0 = time.perf_counter()
            lowered = jax.jit(fn, donate_argnums=donate).lower(*args)
            t1 = time.perf_counter()
            hits = _HITS[0]
            exe = lowered.compile()
            dt = time.perf_counter() - t1
            spent[:] = [t1 - t0, 0.0, dt] if _HITS[0] > hits else [t1 - t0, dt, 0.0]
            return exe
        except Exception as e:
            reraise_host_error(e)
            raise

    exe = executables.get(cache_key)
    if exe is not None:
        return exe, (0.0, 0.0, 0.0)
    exe = _compile_interruptibly(compile_fn)
    executables.put(cache_key, exe)
    return exe, tuple(spent)


def _bind_at(lm, fn, part):
    def bound(*args):
        with bound_params(lm, part(args[1])):
            return fn(*args)

    return bound


def _call(exe, *args):
    try:
        return jax.block_until_ready(exe(*args))
    except Exception as e:  # a user exception in a host callback: raise it as itself
        reraise_host_error(e)
        raise


def _device_prompts(setup: E.Setup) -> E.Prompts:
    return E.Prompts(jnp.asarray(setup.prompts.ids), jnp.asarray(setup.prompts.lens))


def compile_and_run(setup: E.Setup, key_parts: tuple, make: Callable, key, params, rows: int,
                    step_rows: int | None = None):
    """Memory check, [compiled][ppl.inference.driver.compiled], run: the outputs.

    ``make(setup) -> fn(key, params)`` is called inside the trace with the setup's prompts
    traced, so the prompts are an input of the executable (never baked into it).
    """
    check_memory(setup, rows, step_rows)
    prompts = _device_prompts(setup)

    def wrapped():
        return lambda k, p, pr: make(setup.with_prompts(pr))(k, p)

    exe, _ = compiled(setup, key_parts, wrapped, key, params, prompts)
    return _call(exe, key, params, prompts)


#: Target seconds of one chunk of steps between two progress reports (and two chances for
#: Ctrl-C to take effect); without a progress callback chunks are longer.
CHUNK_SECONDS = 0.25
CHUNK_SECONDS_QUIET = 1.0


def _phase(backend, setup, config, options, name, batched: str | None = None):
    """The compiled function of one phase: the runner is built inside the trace, over the
    traced prompts, so the prompts are an input (see [Prompts][ppl.inference.engine.Prompts]).

    ``batched`` (keys or carries, and prompts, with a leading problem axis): ``"exact"`` runs
    the problems one after the other inside the compiled program (``lax.map``: each problem's
    computation is exactly its run alone), ``"fused"`` vmaps them (their rows share every
    matrix product: faster on accelerators, equal to the alone runs up to float rounding,
    which depends on a product's number of rows)."""

    def one(x, params, prompts, *rest):
        runner = backend.make_runner(setup.with_prompts(prompts), config, options)
        if name == "start":
            return runner.start(x, params)
        if name == "advance":
            carry = runner.advance(x, params, rest[0])
            return carry, runner.status(carry)
        if name == "finish":
            return runner.finish(x, params)
        return runner(x, params)

    def make():
        if batched is None:
            return one
        if batched == "exact":
            return lambda x, params, prompts, *rest: jax.lax.map(
                lambda xp: one(xp[0], params, xp[1], *rest), (x, prompts))
        return lambda x, params, prompts, *rest: jax.vmap(
            lambda x1, p1: one(x1, params, p1, *rest))(x, prompts)

    return make


def _run(backend, setup, config, options, key, prompts, batched: str | None = None):
    """Compiles and runs the runner (in chunks of steps for [Phases][ppl.inference.base.Phases]):
    ``(state, info, {"trace", "compile", "run": seconds})``."""
    params = backend.params(setup, options)
    base = (backend.name, options.cache_key(), config.cache_key(), batched)
    timings = {"trace": 0.0, "compile": 0.0, "cache_load": 0.0, "run": 0.0}

    def stage(name, *args, donate=()):
        exe, spent = compiled(setup, base + (name,),
                              _phase(backend, setup, config, options, name, batched), *args,
                              donate=donate)
        for k, v in zip(("trace", "compile", "cache_load"), spent):
            timings[k] += v
        t0 = time.perf_counter()
        out = _call(exe, *args)
        timings["run"] += time.perf_counter() - t0
        return out

    if not isinstance(backend.make_runner(setup, config, options), Phases):
        state, info = stage("run", key, params, prompts)
        return state, info, timings
    carry = stage("start", key, params, prompts)
    target = CHUNK_SECONDS if config.progress_fn is not None else CHUNK_SECONDS_QUIET
    t, chunk = 0, 4
    while True:
        until = jnp.int32(min(t + chunk, setup.max_tokens))
        t0 = time.perf_counter()
        carry, status = stage("advance", carry, params, prompts, until, donate=(0,))
        dt = time.perf_counter() - t0
        steps, live, ess, done = (np.asarray(x) for x in status)
        t = int(np.max(steps))
        if config.progress_fn is not None:
            config.progress_fn(t, int(np.sum(live)), float(np.mean(ess)))
        if bool(np.all(done)) or t >= setup.max_tokens:
            break
        # Steps take about the same time: size the next chunk for the target duration.
        chunk = int(min(max(target / max(dt / max(chunk, 1), 1e-6), 1), setup.max_tokens))
    state, info = stage("finish", carry, params, prompts)
    return state, info, timings


def execute(backend: Backend, setup: E.Setup, config: RunConfig, options: Options, key) -> Result:
    """Compiles (once per key) and runs ``backend``'s runner; its Result, failures raised.

    A [Phases][ppl.inference.base.Phases] runner runs in chunks of steps (about
    ``CHUNK_SECONDS`` each), with ``config.progress_fn`` called after each chunk; any other
    runner runs in one call.

    Raises:
        MemoryRefusal: the estimated memory exceeds what is available.
        InferenceError: every particle was killed (with the condition that killed most), or
            the model produced NaN log-probabilities.
    """
    t_start = time.perf_counter()
    rows = backend.rows(config, options)
    step_rows = None if backend.step_rows is None else backend.step_rows(config, options)
    check_memory(setup, rows, step_rows)
    state, info, timings = _run(backend, setup, config, options, key, _device_prompts(setup))
    res = backend.to_result(setup, config, options, state, info)
    res.timings = dict(timings, total=time.perf_counter() - t_start)
    raise_if_failed(setup, res, bool(np.asarray(info.nan)))
    return res


def execute_many(backend: Backend, setups: list[E.Setup], config: RunConfig, options: Options,
                 keys: list, exact: bool = True) -> list:
    """Runs several problems of one program shape (same fingerprint, prompt bucket and budget)
    as one compiled program: ``B x N`` particles, each problem resampling within itself with
    its own key, ESS history and evidence. With ``exact`` the problems run one after the
    other inside the program, so every problem's numbers are bit for bit those of its run
    alone with the same key; otherwise they are vmapped (see
    [_phase][ppl.inference.driver._phase]).

    Returns:
        One [Result][ppl.Result] per problem, or the [InferenceError][ppl.InferenceError] of a
        problem whose particles all died (the others are unaffected).

    Raises:
        MemoryRefusal: the ``B x N`` estimate exceeds the memory available (the message says
            how many problems fit).
    """
    t_start = time.perf_counter()
    b = len(setups)
    setup = setups[0]
    rows = backend.rows(config, options)
    step_rows = None if backend.step_rows is None else backend.step_rows(config, options)
    try:
        check_memory(setup, rows * b, None if step_rows is None else step_rows * b,
                     what=f"rows ({b} problems x {rows})")
    except MemoryRefusal:
        gib = 2.0**30
        one = estimate_bytes(setup, rows, step_rows)
        per = one["kv_cache"] + one["step_buffers"]
        total = one["weights"] + one["runtime"] + b * per
        avail = _available_bytes() or 0
        fit = int(max(0.9 * avail - one["weights"] - one["runtime"], 0) // max(per, 1))
        advice = (f"pass batch_size={fit} to run them in groups of {fit}" if fit >= 1 else
                  "even one problem does not fit: lower particles or max_tokens")
        raise MemoryRefusal(
            f"{b} problems of {config.num_particles} particles need about {total / gib:.2f} GiB "
            f"(weights {one['weights'] / gib:.2f} GiB + runtime {one['runtime'] / gib:.2f} GiB + "
            f"{per / gib:.3f} GiB per problem) but only {avail / gib:.2f} GiB is available. "
            f"At most ~{fit} problems fit at once: {advice}.") from None
    prompts = E.Prompts(jnp.stack([jnp.asarray(s.prompts.ids) for s in setups]),
                        jnp.stack([jnp.asarray(s.prompts.lens) for s in setups]))
    state, info, timings = _run(backend, setup, config, options, jnp.stack(keys), prompts,
                                batched="exact" if exact else "fused")
    total = time.perf_counter() - t_start
    t_run = timings["run"]
    out = []
    for i, s in enumerate(setups):
        st_i = jax.tree.map(lambda a: a[i], state)
        info_i = jax.tree.map(lambda a: a[i], info)
        res = backend.to_result(s, config, options, st_i, info_i)
        res.timings = dict(timings, run=t_run / b, total=total / b, batch_run=t_run,
                           batch_total=total, batch_size=b)
        try:
            raise_if_failed(s, res, bool(np.asarray(info_i.nan)))
        except InferenceError as e:
            res = e
        out.append(res)
    return out


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
    _raise_if_user_nan(setup, res)
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
            detail = (" No condition failed: every weight became zero through a factor or an "
                      "observe of -inf (e.g. an observed value the model gives probability 0).")
        raise InferenceError(
            f"No particle satisfied the program's constraints: all {res.num_particles} particles "
            f"have zero weight.{detail} Relax the constraints, raise max_tokens, or use more "
            "particles."
        )


def _raise_if_user_nan(setup: E.Setup, res: Result) -> None:
    """The rule for user log-weights: NaN or +inf from a factor, twist or observe is an error
    naming it (the particle was removed when it happened; this reports it for every particle
    still in the final population, e.g. all of them when none survived)."""
    from ppl.context import NAN_CAUSE

    causes = np.asarray(res.extras.get("causes", np.array([])))
    names = setup.condition_names
    bad = {names[c][len(NAN_CAUSE):]: int(np.sum(causes == c)) for c in range(len(names))
           if names[c].startswith(NAN_CAUSE) and np.any(causes == c)}
    seen = int(np.asarray(res.extras.get("nan_cause", -1)))
    if not bad and 0 <= seen < len(names) and names[seen].startswith(NAN_CAUSE):
        # Every particle it happened to was resampled away; the run still reports it.
        culprit = names[seen][len(NAN_CAUSE):]
        raise InferenceError(
            f"{culprit} produced NaN or +inf during the run (the particles it happened to were "
            "later resampled away, which does not make the program correct). "
            "Rule: a log-weight is a finite number or -inf (which removes the particle); NaN "
            "and +inf are errors in the program, never a silent loss of particles. Fix the "
            "expression (e.g. guard a log of 0 or a division by 0, or clip it).")
    if bad:
        worst = max(bad, key=bad.get)
        raise InferenceError(
            f"{worst} produced NaN or +inf for {bad[worst]} of {res.num_particles} particles. "
            "Rule: a log-weight is a finite number or -inf (which removes the particle); NaN "
            "and +inf are errors in the program, never a silent loss of particles. Fix the "
            "expression (e.g. guard a log of 0 or a division by 0, or clip it).")
