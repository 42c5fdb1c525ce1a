"""The public entry point ``infer``: every backend, one way in."""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

from ppl._jaxcache import enable_compilation_cache
from ppl.errors import OptionError
from ppl.program import Program
from ppl.result import Result

__all__ = ["infer", "infer_many", "log_z_bounds", "methods", "register_method"]


def log_z_bounds(program: Program, samples, particles: int = 32, seed: int = 0,
                 runs: int | None = None, **options):
    """Lower (SMC) and upper (conditional sweeps around exact posterior ``samples``) bounds
    on ``log Z``, with Monte Carlo errors.

    Args:
        program: the [Program][ppl.Program].
        samples: exact posterior samples (texts or token-id sequences), one conditional sweep
            (``method="csmc"``, no ancestor sampling) each.
        particles: ``N`` of every run.
        seed: runs use seeds ``seed, seed + 1, ...``.
        runs: SMC runs for the lower side (default: as many as samples).
        **options: ``resampling`` / ``ess_threshold`` of both kinds of run.

    Returns:
        ``ppl.inference.bounds.LogZBounds``: ``lower``, ``lower_se``, ``upper``, ``upper_se``
        (means and standard errors of ``log Z_hat``), the runs' values and ``gap``. See
        docs/backends.md for why the conditional sweeps bound ``log Z`` from above.
    """
    from ppl.inference.bounds import log_z_bounds as bounds

    return bounds(program, samples, particles, seed, runs, **options)


def methods() -> list[str]:
    """Names accepted by ``infer(method=...)``."""
    from ppl.inference import registry

    return registry.names()


def register_method(name: str, family: str = "particle"):
    """Registers ``fn(program, *, particles, seed, **options) -> Result`` as ``method=name``
    (see [register_method][ppl.inference.registry.register_method])."""
    from ppl.inference import registry

    return registry.register_method(name, family)


def infer(program: Program, method: str = "smc", particles: int = 32, seed: Any = 0,
          progress: Callable[[int, int, float], None] | None = None, devices=None,
          **options) -> Result:
    """Runs inference on ``program`` and returns its [Result][ppl.Result].

    Args:
        program: a [Program][ppl.Program] (for example from [steer][ppl.steer]).
        method: ``"is"``, ``"smc"``, ``"smc_steer"`` and any other name in
            [methods][ppl.methods].
        particles: number of particles ``N`` (an int >= 1).
        seed: an int or a JAX PRNG key; the same seed gives the same result bit for bit.
        progress: optional host callback ``(step, live_particles, ess)`` called after every
            step (costs one host round-trip per step; used by the CLI's progress bar).
        devices: a list of devices (e.g. ``jax.devices()``) or a ``jax.sharding.Mesh`` with a
            ``"particles"`` axis: the particle axis is sharded across them (weights
            replicated); ``particles`` must be a multiple of the device count.
        **options: backend options, e.g. ``resampling="systematic"``,
            ``ess_threshold=0.5`` (smc), ``num_beams=3`` (smc_steer); each backend's options
            dataclass lists its own (``ppl methods``).

    Raises:
        ppl.errors.OptionError: unknown method or option, or an option out of range.
        ValueError: prompt too long for the model's context.
        MemoryError: the estimated memory of the run exceeds what is available.
        ppl.InferenceError: no particle satisfied the program's conditions, or NaN.
    """
    from ppl.inference import driver, engine, registry
    from ppl.inference.base import RunConfig, check_count
    from ppl.inference.sharding import particle_mesh

    if not isinstance(program, Program):
        raise TypeError(f"infer() needs a ppl.Program, got {type(program).__name__}.")
    backend = registry.get(method)
    opts = backend.options.build(method, options)
    n = check_count("particles", particles)
    key = driver.as_key(seed)
    mesh = particle_mesh(devices)
    if mesh is not None and n % mesh.size:
        raise OptionError(f"particles ({n}) must be a multiple of the number of devices "
                          f"({mesh.size}).")
    enable_compilation_cache()
    setup = engine.prepare(program)
    result = driver.run(backend, setup, RunConfig(n, mesh, progress), opts, key)
    return _record_run(result, seed, opts)


def _record_run(result: Result, seed, opts) -> Result:
    """Stores what reproduces the run (seed, options) on the result, for ``Result.save``."""
    import numbers

    import jax
    import numpy as np

    if isinstance(seed, numbers.Integral):
        result.seed = int(seed)
    else:
        try:
            data = jax.random.key_data(seed) if jax.dtypes.issubdtype(
                seed.dtype, jax.dtypes.prng_key) else seed
            result.seed = np.asarray(data).astype(int).tolist()
        except (AttributeError, TypeError):
            result.seed = repr(seed)
    result.options = opts.to_dict() if hasattr(opts, "to_dict") else {}
    return result


def infer_many(programs: Program | Sequence[Program], method: str = "smc", particles: int = 32,
               seed: Any = 0, *, prompts: Sequence | None = None, seeds: Sequence | None = None,
               progress: Callable[[int, int, float], None] | None = None,
               batch_size: int | None = None, exact: bool = True, **options) -> list:
    """Runs many problems at once: one [Result][ppl.Result] per problem, in input order.

    Problems are programs (or one program and a list of ``prompts``, each replacing its
    prompt). Those of one shape — equal programs but for their prompts, prompt lengths in the
    same bucket (see [prompt_bucket][ppl.inference.engine.prompt_bucket]) — run as one compiled
    program over ``B x N`` particles: each problem resamples within itself and has its own
    key, ESS history and evidence estimate. Problem ``i`` uses ``seeds[i]`` (default
    ``seed + i``, or ``fold_in(seed, i)`` for a key), so with ``exact=True`` its result equals
    ``ppl.infer(problem_i, seed=seeds[i])`` bit for bit, whatever else is in the batch.

    Args:
        programs: a list of [Program][ppl.Program]s, or one program with ``prompts``.
        method, particles, seed, progress, **options: as [infer][ppl.infer].
        prompts: the prompts of the problems (each a string, token ids, or a list of them for
            programs with several contexts).
        seeds: one seed per problem.
        batch_size: at most this many problems per compiled call (default: all of a shape;
            a memory refusal names the number that fits).
        exact: the problems run one after the other inside the compiled program (one compile,
            one call per chunk of steps), so batch composition never changes a number.
            ``False`` vmaps them, folding the ``B x N`` rows into each matrix product: faster
            on accelerators, equal to the alone runs up to float rounding.

    Returns:
        A list with one Result per problem, or the ``InferenceError`` of a problem in which no
        particle survived (raised only if every problem failed).
    """
    import jax

    from ppl.errors import InferenceError
    from ppl.inference import driver, engine, executables, registry
    from ppl.inference.base import RunConfig, check_count

    if prompts is not None:
        if not isinstance(programs, Program):
            raise TypeError("infer_many(prompts=...) needs one program to give the prompts to.")
        base, programs = programs, []
        for p in prompts:
            one = copy.copy(base)
            one.prompt = p
            programs.append(one)
    elif isinstance(programs, Program):
        programs = [programs]
    programs = list(programs)
    if not programs:
        raise OptionError("infer_many() needs at least one problem.")
    for p in programs:
        if not isinstance(p, Program):
            raise TypeError(f"infer_many() needs ppl.Programs, got {type(p).__name__}.")
    backend = registry.get(method)
    opts = backend.options.build(method, options)
    n = check_count("particles", particles)
    if seeds is None:
        base_key = driver.as_key(seed)
        keys = ([driver.as_key(int(seed) + i) for i in range(len(programs))]
                if not isinstance(seed, jax.Array) else
                [jax.random.fold_in(base_key, i) for i in range(len(programs))])
    else:
        if len(seeds) != len(programs):
            raise OptionError(f"seeds has {len(seeds)} entries for {len(programs)} problems.")
        keys = [driver.as_key(s) for s in seeds]
    if batch_size is not None:
        batch_size = check_count("batch_size", batch_size)

    def seed_of(i):
        if seeds is not None:
            return seeds[i]
        return int(seed) + i if not isinstance(seed, jax.Array) else keys[i]
    enable_compilation_cache()
    config = RunConfig(n, None, progress)
    # Group the problems by compiled shape; the condition names are collected once a group.
    groups: dict = {}
    names: dict = {}
    setups = []
    for i, p in enumerate(programs):
        shape = (executables.program_key(p), executables.fingerprint(p.lm), int(p.max_tokens))
        setup = engine.prepare(p, condition_names=names.get(shape))
        names.setdefault(shape, setup.condition_names)
        setups.append(setup)
        groups.setdefault(shape + (setup.static_key(),), []).append(i)
    results: list = [None] * len(programs)
    for members in groups.values():
        if backend.run is not None or len(members) == 1:
            for i in members:
                try:
                    results[i] = _record_run(driver.run(backend, setups[i], config, opts,
                                                        keys[i]), seed_of(i), opts)
                    results[i].timings["batch_size"] = 1
                except InferenceError as e:
                    results[i] = e
            continue
        backend.validate(setups[members[0]], config, opts)
        size = batch_size or len(members)
        for lo in range(0, len(members), size):
            part = members[lo:lo + size]
            outs = driver.execute_many(backend, [setups[i] for i in part], config, opts,
                                       [keys[i] for i in part], exact=exact)
            for i, r in zip(part, outs):
                results[i] = _record_run(r, seed_of(i), opts) if isinstance(r, Result) else r
    if all(isinstance(r, InferenceError) for r in results):
        raise results[0]
    return results
