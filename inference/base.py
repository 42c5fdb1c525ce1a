"""The backend contract: what one row of the registry declares and what a run is given.

A backend is a [Backend][ppl.inference.base.Backend] record, declared once at the end of its
module (``BACKEND = Backend(...)``) and listed in [ppl.inference.registry][]. The record holds
its options as a frozen dataclass (defaults and validation written once, in the dataclass),
a ``make_runner(setup, config, options)`` that returns the pure function the driver compiles,
``runner(key, params) -> (state, info)``, and a ``to_result(setup, config, options, state,
info)`` that turns what the runner returned into a [Result][ppl.Result].

Everything about *one run* (particle count, devices, progress callback) travels in a
[RunConfig][ppl.inference.base.RunConfig], passed explicitly to runners and kernels; static
facts about the program are in [Setup][ppl.inference.engine.Setup]. Nothing is stored on the
user's program.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, NamedTuple

from ppl.errors import OptionError

__all__ = ["Backend", "Options", "Phases", "RunConfig", "check_bool", "check_choice", "check_count",
           "check_fraction", "check_number", "option"]


class RunConfig(NamedTuple):
    """Everything about one run that is not the program or the backend's options.

    Attributes:
        num_particles: ``N``, the particles of the run (per chain for MCMC backends).
        mesh: a ``jax.sharding.Mesh`` with a ``"particles"`` axis, or None (one device).
        progress_fn: host callback ``(step, live particles, ess)`` after every step, or None.
    """

    num_particles: int
    mesh: Any = None
    progress_fn: Callable[[int, int, float], None] | None = None

    @property
    def sharded(self) -> bool:
        return self.mesh is not None

    def cache_key(self) -> tuple:
        """What of the config a compiled run is specialised on (progress is reported by the
        driver between chunks of steps, so it is not part of any executable)."""
        mesh = None if self.mesh is None else (tuple(d.id for d in self.mesh.devices.flat),
                                              self.mesh.axis_names)
        return (self.num_particles, mesh)


@dataclasses.dataclass(frozen=True, eq=False)
class Phases:
    """A runner in resumable pieces, so the driver can run the token loop in chunks of steps.

    Between chunks the driver reports progress and Python can handle Ctrl-C; no host
    callback is compiled into any of the three executables, so all of them persist in JAX's
    compilation cache. Keys are per step (``fold_in(loop key, t)``), so how the steps are
    chunked never changes a result.

    Attributes:
        start: ``(key, params) -> carry`` (prefill, ``init``).
        advance: ``(carry, params, until) -> carry``: the steps with ``t < until`` (while any
            particle is running).
        finish: ``(carry, params) -> (state, info)`` (``final``, end-of-run moves, info).
        status: ``carry -> (steps done, live particles, last ESS, finished)`` (device scalars).
    """

    start: Callable
    advance: Callable
    finish: Callable
    status: Callable

    def __call__(self, key, params):
        """The whole run as one function (for ``jax.jit``/``vmap`` in tests)."""
        import jax.numpy as jnp

        carry = self.start(key, params)
        carry = self.advance(carry, params, jnp.int32(2**30))
        return self.finish(carry, params)


# ---- validation, written once ---------------------------------------------------------------

def check_count(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``; bools, floats and strings are refused, not coerced."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OptionError(f"{name} must be an integer >= {minimum}, got {value!r} "
                          f"({type(value).__name__}).")
    if int(value) < minimum:
        raise OptionError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)


def check_number(name: str, value, low: float = -math.inf, high: float = math.inf,
                 open_low: bool = False) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``open_low``);
    bools, strings and NaN are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionError(f"{name} must be a number, got {value!r} ({type(value).__name__}).")
    v = float(value)
    ok = math.isfinite(v) and (v > low if open_low else v >= low) and v <= high
    if not ok:
        lo = ("(" if open_low else "[") + f"{low:g}"
        bounds = f"in {lo}, {high:g}]" if math.isfinite(high) else (
            (f"> {low:g}" if open_low else f">= {low:g}") if math.isfinite(low) else "finite")
        raise OptionError(f"{name} must be {bounds}, got {value!r}.")
    return v


def check_fraction(name: str, value) -> float:
    return check_number(name, value, 0.0, 1.0)


def check_choice(name: str, value, choices, what: str | None = None) -> Any:
    """``value`` if it is one of ``choices`` (``what`` names the kind in the message)."""
    if not isinstance(value, str) or value not in tuple(choices):
        raise OptionError(f"Unknown {what or name} {value!r} for {name}; choose one of "
                          f"{sorted(choices)}.")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise OptionError(f"{name} must be True or False, got {value!r}.")
    return value


def option(default, check: Callable[[str, Any], Any] | None = None, *args):
    """A field of an [Options][ppl.inference.base.Options] dataclass: its default and its
    check, ``check(name, value, *args) -> value`` (one of the ``check_*`` functions)."""
    meta = {} if check is None else {"check": lambda name, v: check(name, v, *args)}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Options:
    """Base of every backend's options: a frozen dataclass of [option][ppl.inference.base.option]
    fields, each validated by its own check when the options are built (subclasses add a
    ``__post_init__`` only for rules between fields, calling ``super().__post_init__()``).

    Array-valued options (learned proposal parameters) are runtime inputs of the compiled
    run, so only their kind and shapes enter [cache_key][ppl.inference.base.Options.cache_key].
    """

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            if check is not None:
                object.__setattr__(self, f.name, check(f.name, getattr(self, f.name)))

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def build(cls, method: str, options: dict) -> "Options":
        """Options from ``ppl.infer``'s keyword arguments, unknown names refused by name."""
        unknown = set(options) - set(cls.names())
        if unknown:
            raise OptionError(
                f"Unknown option(s) {sorted(unknown)} for method {method!r}; it accepts "
                f"{sorted(cls.names()) or 'no options'}.")
        return cls(**options)

    def cache_key(self) -> tuple:
        return tuple((f.name, _static(getattr(self, f.name))) for f in dataclasses.fields(self))

    def to_dict(self) -> dict:
        """JSON-friendly values (array-valued options as their kind/shapes)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _static(x):
    if isinstance(x, dict):
        return tuple(sorted((str(k), _static(v)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return tuple(_static(v) for v in x)
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return ("array", tuple(x.shape), str(x.dtype))
    return x


def _jsonable(x):
    s = _static(x)
    return s if isinstance(s, (int, float, str, bool, type(None))) else repr(s)


@dataclasses.dataclass(frozen=True)
class Backend:
    """One registry row: a backend ``ppl.infer(method=name)`` runs.

    Attributes:
        name: the ``method=`` name.
        family: ``"particle"`` (weighted particles, unbiased evidence), ``"mcmc"`` (a chain:
            consistent posterior) or ``"vi"`` (a trained proposal, then a particle run).
        options: the frozen [Options][ppl.inference.base.Options] dataclass.
        make_runner: ``(setup, config, options) -> runner``; ``runner(key, params) ->
            (state, info)`` is pure and is what the driver compiles; a
            [Phases][ppl.inference.base.Phases] runner (the particle backends) is run by the
            driver in chunks of steps.
        to_result: ``(setup, config, options, state, info) -> Result`` (numpy side).
        params: ``(setup, options) -> params``: the runner's second argument (default the
            LM's parameters; a learned proposal passes ``(lm params, its own)``).
        rows: ``(config, options) -> int``: sequences whose KV cache the run holds at once
            (memory estimate).
        step_rows: ``(config, options) -> int``: rows of vocabulary-sized step buffers (the
            candidates proposed per step; ``rows`` by default).
        validate: ``(setup, config, options) -> None``: checks that need the program (e.g.
            that a replaying backend's program samples only LM tokens).
        run: for a backend composed of other compiled runs (VI: train, then run): ``(setup,
            config, options, key) -> Result`` replaces ``make_runner``/``to_result``.
        summary: one line for ``ppl methods``.
    """

    name: str
    family: str
    options: type
    make_runner: Callable | None = None
    to_result: Callable | None = None
    params: Callable = lambda setup, options: setup.lm.params  # noqa: E731
    rows: Callable = lambda config, options: config.num_particles  # noqa: E731
    step_rows: Callable | None = None
    validate: Callable = lambda setup, config, options: None  # noqa: E731
    run: Callable | None = None
    summary: str = ""

    def __post_init__(self):
        if self.family not in ("particle", "mcmc", "vi"):
            raise ValueError(f"Backend {self.name!r}: family must be 'particle', 'mcmc' or 'vi'.")
        if self.run is None and (self.make_runner is None or self.to_result is None):
            raise ValueError(f"Backend {self.name!r} needs make_runner and to_result (or run).")
