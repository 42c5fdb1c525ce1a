"""The executable cache: compiled runs keyed by everything their trace depends on.

A compiled run is specialised on the program's Python attributes (its tables, constraints,
temperature, host functions), the model, the prompt and budget, the backend and its options,
the run's configuration and the shapes of its inputs. `program_key` fingerprints the
program so that changing any attribute after a run (``p.temperature = 0.05``) gives a new
executable instead of a stale one; two program objects with equal fingerprints (e.g. two
``ppl.steer`` calls with the same arguments) share one.

Fingerprints, by value type:

* numbers, strings, bytes, ``None``: the value; tuples, lists, dicts, sets: element-wise;
* NumPy arrays (mutable): shape, dtype and a hash of the contents;
* JAX arrays (immutable), functions, classes, modules, language models, and objects nested
  deeper than ``MAX_DEPTH``: the object's identity (so the key holds a reference to it);
* objects whose type defines ``__fingerprint__()`` (e.g. a compiled token automaton: a digest
  of its tables): that value, so equal constraints built twice share an executable;
* other objects: their type and their attributes, recursively.

Attributes named in the program's ``host_attributes`` are only read on the host while the
run executes (inside ``ctx.text`` callbacks), so they are left out of the fingerprint; such a
program's executables are then tied to that program object.

The cache holds at most ``MAX_ENTRIES`` executables (least recently used evicted first).
"""

from __future__ import annotations

import functools
import hashlib
import threading
import types
from collections import OrderedDict
from typing import Any, Callable

import jax
import numpy as np

__all__ = ["MAX_DEPTH", "MAX_ENTRIES", "clear", "fingerprint", "get", "latest",
           "lookup_or_compile", "program_key", "put", "signature", "size"]

MAX_DEPTH = 3
MAX_ENTRIES = 64

_STORE: "OrderedDict[tuple, Any]" = OrderedDict()
_LOCK = threading.Lock()
_EXCLUDED = frozenset({"lm", "prompt", "max_tokens"})


class _Id:
    """Identity as a hashable key (holds a reference, so the id cannot be reused)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _Id) and other.obj is self.obj

    def __repr__(self):
        return f"_Id({type(self.obj).__name__}@{id(self.obj):x})"


def _is_lm(x) -> bool:
    from ppl.models.base import LanguageModel

    return isinstance(x, LanguageModel)


def fingerprint(x, depth: int = 0, seen: frozenset = frozenset()) -> Any:
    """A hashable value equal for two objects exactly when a trace could not tell them apart
    (see the module doc for the rules)."""
    if x is None or isinstance(x, (bool, int, str, bytes)):
        return (type(x).__name__, x)
    if isinstance(x, float):
        return ("float", x.hex())  # hex: nan equals nan, -0.0 differs from 0.0
    if isinstance(x, np.generic):
        return ("np", str(x.dtype), x.tobytes())
    if isinstance(x, np.ndarray):
        data = np.ascontiguousarray(x)
        digest = hashlib.blake2b(data.view(np.uint8).reshape(-1) if data.size else b"",
                                 digest_size=16).digest()
        return ("ndarray", data.shape, str(data.dtype), digest)
    if isinstance(x, jax.Array):
        return _Id(x)
    if isinstance(x, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type,
                      types.ModuleType)) or _is_lm(x):
        return _Id(x)
    custom = getattr(type(x), "__fingerprint__", None)
    if custom is not None:  # a value-based fingerprint the type defines (e.g. TokenAutomaton)
        fp = x.__fingerprint__()
        if fp is not None:
            return (_Id(type(x)), fp)
    if isinstance(x, functools.partial):
        return ("partial", _Id(x.func), fingerprint(x.args, depth, seen),
                fingerprint(x.keywords, depth, seen))
    if id(x) in seen or depth >= MAX_DEPTH:
        return _Id(x)
    seen = seen | {id(x)}
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(fingerprint(v, depth + 1, seen) for v in x))
    if isinstance(x, dict):
        items = [(fingerprint(k, depth + 1, seen), fingerprint(v, depth + 1, seen))
                 for k, v in x.items()]
        return ("dict", tuple(sorted(items, key=repr)))
    if isinstance(x, (set, frozenset)):
        return ("set", frozenset(fingerprint(v, depth + 1, seen) for v in x))
    attrs = getattr(x, "__dict__", None)
    if attrs is None:
        slots = [s for c in type(x).__mro__ for s in getattr(c, "__slots__", ())]
        if not slots:
            return _Id(x)
        attrs = {s: getattr(x, s) for s in slots if hasattr(x, s)}
    return (_Id(type(x)), fingerprint(attrs, depth + 1, seen))


def program_key(program) -> tuple:
    """The program's part of an executable key (its type and attributes; the model, prompt
    and budget enter through the [Setup][ppl.inference.engine.Setup])."""
    host = frozenset(getattr(program, "host_attributes", ()))
    attrs = {k: v for k, v in vars(program).items() if k not in _EXCLUDED and k not in host}
    return (_Id(type(program)), fingerprint(attrs, 1), _Id(program) if host else None)


def get(key: tuple):
    with _LOCK:
        exe = _STORE.get(key)
        if exe is not None:
            _STORE.move_to_end(key)
        return exe


def put(key: tuple, exe) -> None:
    with _LOCK:
        _STORE[key] = exe
        _STORE.move_to_end(key)
        while len(_STORE) > MAX_ENTRIES:
            _STORE.popitem(last=False)


def latest():
    """The most recently compiled or used executable (benchmarks read its HLO and memory
    analysis), or None."""
    with _LOCK:
        return next(reversed(_STORE.values()), None)


def size() -> int:
    """Executables held (for tests and diagnostics)."""
    return len(_STORE)


def clear() -> None:
    with _LOCK:
        _STORE.clear()


def signature(tree) -> tuple:
    """Structure, shapes and dtypes of ``tree``: what an executable is specialised on."""
    leaves, treedef = jax.tree.flatten(tree)
    return (treedef,) + tuple(
        (tuple(np.shape(x)), str(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype))
        for x in leaves)


def lookup_or_compile(key: tuple, compile_fn: Callable[[], Any]):
    """``(executable, compiled_now)``."""
    exe = get(key)
    if exe is not None:
        return exe, False
    exe = compile_fn()
    put(key, exe)
    return exe, True
