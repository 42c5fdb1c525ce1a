"""The public entry points: ``infer`` (every backend) and ``steer`` (the common program)."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

from ppl._jaxcache import enable_compilation_cache
from ppl.program import Program
from ppl.result import Result

__all__ = ["infer", "methods", "register_method"]

_METHODS: dict[str, Callable[..., Result]] = {}


def register_method(name: str):
    """Registers ``fn(program, *, particles, seed, **options) -> Result`` as ``method=name``."""

    def deco(fn):
        _METHODS[name] = fn
        return fn

    return deco


def methods() -> list[str]:
    """Names accepted by ``infer(method=...)``."""
    _load_methods()
    return sorted(_METHODS)


def _load_methods():
    # Backends register themselves on import; importing here keeps `import ppl` light.
    from ppl.inference import registry  # noqa: F401


def infer(program: Program, method: str = "smc", particles: int = 32, seed: Any = 0,
          progress: Callable[[int, int, float], None] | None = None, devices=None,
          **options) -> Result:
    """Runs inference on ``program`` and returns its :class:`~ppl.Result`.

    Args:
        program: a :class:`~ppl.Program` (for example from :func:`steer`).
        method: ``"is"``, ``"smc"``, ``"smc_steer"`` and any other name in :func:`methods`.
        particles: number of particles ``N``.
        seed: an int or a JAX PRNG key; the same seed gives the same result bit for bit.
        progress: optional host callback ``(step, live_particles, ess)`` called after every
            step (costs one host round-trip per step; used by the CLI's progress bar).
        devices: a list of devices (e.g. ``jax.devices()``) or a ``jax.sharding.Mesh`` with a
            ``"particles"`` axis: the particle axis is sharded across them (weights
            replicated); ``particles`` must be a multiple of the device count.
        **options: backend options, e.g. ``resampling="systematic"``,
            ``ess_threshold=0.5`` (smc), ``num_beams=3`` (smc_steer).

    Raises:
        ValueError: unknown method or option, prompt too long for the model's context.
        MemoryError: the estimated memory of the run exceeds what is available.
        ppl.InferenceError: no particle satisfied the program's conditions, or NaN.
    """
    _load_methods()
    enable_compilation_cache()
    if not isinstance(program, Program):
        raise TypeError(f"infer() needs a ppl.Program, got {type(program).__name__}.")
    if method not in _METHODS:
        raise ValueError(f"Unknown method {method!r}; available: {', '.join(methods())}.")
    if int(particles) < 1:
        raise ValueError(f"particles must be >= 1, got {particles}.")
    fn = _METHODS[method]
    allowed = {p for p in inspect.signature(fn).parameters} - {"program", "particles", "seed"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(
            f"Unknown option(s) {sorted(unknown)} for method {method!r}; it accepts "
            f"{sorted(allowed) or 'no options'}."
        )
    from ppl.inference._engine import prepare

    from ppl.inference.sharding import particle_mesh

    setup = prepare(program)
    mesh = particle_mesh(devices)
    if mesh is not None and int(particles) % mesh.size:
        raise ValueError(
            f"particles ({particles}) must be a multiple of the number of devices ({mesh.size}).")
    setup.progress_fn = progress
    setup.mesh = mesh
    try:
        return fn(program, particles=int(particles), seed=seed, **options)
    finally:
        setup.progress_fn = None
        setup.mesh = None
