"""Inference backends: one module per algorithm, declared as [Backend][ppl.inference.base.Backend]
records in [ppl.inference.registry][]; [ppl.inference.engine][] is their shared toolkit."""

from ppl.inference.base import Backend, Options, RunConfig
from ppl.inference.registry import REGISTRY, get, names, register

__all__ = ["Backend", "Options", "REGISTRY", "RunConfig", "get", "names", "register"]
