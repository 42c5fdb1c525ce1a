"""The library's errors: one base class, so a caller can catch everything steerppl raises.

Every error names its cause and the fix. The subclasses also derive from the built-in type a
caller would expect (``ValueError`` for bad input, ``RuntimeError`` for a failed run,
``MemoryError`` for a run that would not fit), so existing ``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = ["InferenceError", "MemoryRefusal", "OptionError", "PPLError", "ProgramError"]


class PPLError(Exception):
    """Base class of every error steerppl raises on purpose."""


class ProgramError(PPLError, ValueError):
    """A program broke a rule of the program model (raised while tracing, with the fix)."""


class OptionError(PPLError, ValueError):
    """An unknown method, an unknown backend option, or an option value out of its range."""


class InferenceError(PPLError, RuntimeError):
    """Inference could not produce a posterior (every particle dead, NaN in the model...)."""


class MemoryRefusal(PPLError, MemoryError):
    """The up-front memory estimate of a run exceeds the memory available (nothing was
    allocated)."""
