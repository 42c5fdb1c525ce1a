"""The public entry point ``infer``: every backend, one way in."""

from __future__ import annotations

from typing import Any, Callable

from ppl._jaxcache import enable_compilation_cache
from ppl.errors import OptionError
from ppl.program import Program
from ppl.result import Result

__all__ = ["infer", "methods", "register_method"]


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
    return driver.run(backend, setup, RunConfig(n, mesh, progress), opts, key)
