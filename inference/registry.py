"""The table of backends ``ppl.infer(method=...)`` dispatches to: one loop over the modules'
``BACKEND`` records, plus [register][ppl.inference.registry.register] for new ones.

Adding a backend is one module that ends with ``BACKEND = Backend(...)`` (see
[ppl.inference.base][]) and one ``register(BACKEND)`` call (or a line in ``_BUILTIN`` below).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

from ppl.errors import OptionError
from ppl.inference.base import Backend, Options

__all__ = ["REGISTRY", "get", "names", "register", "register_method"]

REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Makes ``backend`` available as ``ppl.infer(method=backend.name)`` (replacing any
    backend of that name)."""
    if not isinstance(backend, Backend):
        raise TypeError(f"register() needs a ppl.inference.base.Backend, got {backend!r}.")
    REGISTRY[backend.name] = backend
    return backend


def _builtin():
    from ppl.inference import importance, particle_gibbs, pimh, smc, smc_steer, vi

    for module in (importance, smc, smc_steer, pimh, particle_gibbs, vi):
        REGISTRY.setdefault(module.BACKEND.name, module.BACKEND)
    REGISTRY.setdefault(particle_gibbs.CSMC_BACKEND.name, particle_gibbs.CSMC_BACKEND)


def names() -> list[str]:
    """Every registered method name, sorted."""
    _builtin()
    return sorted(REGISTRY)


def get(name: str) -> Backend:
    """The backend called ``name``.

    Raises:
        OptionError: no backend has that name (the message lists them).
    """
    _builtin()
    if name not in REGISTRY:
        raise OptionError(f"Unknown method {name!r}; available: {', '.join(names())}.")
    return REGISTRY[name]


def register_method(name: str, family: str = "particle"):
    """Registers a whole-run function ``fn(program, *, particles, seed, **options) ->
    Result`` as ``method=name`` (its keyword defaults become the backend's options).

    For backends that compile their own run; a backend built on the engine declares a
    [Backend][ppl.inference.base.Backend] instead.
    """

    def deco(fn: Callable):
        fields = [(p.name, object, dataclasses.field(default=p.default))
                  for p in inspect.signature(fn).parameters.values()
                  if p.kind is p.KEYWORD_ONLY and p.name not in ("particles", "seed")
                  and p.default is not p.empty]
        opts = dataclasses.make_dataclass(f"{name}_options", fields, bases=(Options,), frozen=True)

        def run(setup, config, options, key):
            return fn(setup.program, particles=config.num_particles, seed=key,
                      **{f.name: getattr(options, f.name) for f in dataclasses.fields(options)})

        register(Backend(name=name, family=family, options=opts, run=run,
                         summary=(fn.__doc__ or "").strip().split("\n")[0]))
        return fn

    return deco


