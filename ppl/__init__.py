"""steerppl: probabilistic programs that steer language models, compiled to JAX.

The LM is the prior; constraints, rewards and other prompts are likelihoods; the answer is
the posterior, approximated by a backend chosen with ``ppl.infer(program, method=...)``.

The distribution is ``steerppl``; the import name is ``ppl``. Names are imported on first
use (``import ppl`` does not import JAX; ``ppl.infer`` or ``ppl.Program`` does), so command
lines and tools that only look at the package start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ppl.errors import InferenceError, PPLError, ProgramError

__version__ = "0.1.0"
# Marks this package as steerppl's ``ppl`` (another distribution on the index also installs a
# top-level ``ppl``); see ``ppl._identity``.
__steerppl__ = True

# public name -> the module that defines it (imported on first access, PEP 562)
_LAZY = {
    "infer": "ppl.api",
    "infer_many": "ppl.api",
    "log_z_bounds": "ppl.api",
    "methods": "ppl.api",
    "register_method": "ppl.api",
    "Context": "ppl.context",
    "TokenDist": "ppl.dists",
    "chat": "ppl.models.chat",
    "Program": "ppl.program",
    "Result": "ppl.result",
    "SteerProgram": "ppl.steering",
    "steer": "ppl.steering",
}
_SUBMODULES = {"models", "stdlib", "inference", "testing", "viz", "cli", "gallery", "handlers",
               "strategies", "api", "context", "dists", "program", "result", "steering",
               "errors", "proposal_lm"}

if TYPE_CHECKING:  # what type checkers and the API docs see
    from ppl import inference, models, stdlib, testing, viz  # noqa: F401
    from ppl.api import infer, infer_many, log_z_bounds, methods, register_method  # noqa: F401
    from ppl.context import Context  # noqa: F401
    from ppl.dists import TokenDist  # noqa: F401
    from ppl.models.chat import chat  # noqa: F401
    from ppl.program import Program  # noqa: F401
    from ppl.result import Result  # noqa: F401
    from ppl.steering import SteerProgram, steer  # noqa: F401


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"ppl.{name}")
    else:
        raise AttributeError(f"module 'ppl' has no attribute {name!r}")
    globals()[name] = value  # later accesses are plain attribute lookups
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)


__all__ = [
    "Context",
    "InferenceError",
    "PPLError",
    "Program",
    "ProgramError",
    "Result",
    "SteerProgram",
    "TokenDist",
    "chat",
    "infer",
    "infer_many",
    "log_z_bounds",
    "methods",
    "models",
    "register_method",
    "steer",
]
