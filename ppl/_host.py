"""Python on the host, called from a compiled run: one batched callback per step.

Program code runs per particle and is vmapped, so a host function written for one particle
(``fn(text) -> float``) must be called on every particle's arguments at once. `host_map`
does that with ``jax.pure_callback(..., vmap_method="expand_dims")``: under the backend's vmap
the callback receives the batch and calls the per-particle function row by row.

An exception raised by user code on the host would otherwise reach the user as JAX's
``INTERNAL: CpuCallback error``. The callback stores it under a tag carried by the error
message, and `reraise_host_error` (called by the driver around every run) raises the
user's own exception, with its traceback, in place of JAX's.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from typing import Any, Callable, Sequence

import jax
import numpy as np

__all__ = ["host_map", "reraise_host_error"]

_ERRORS: dict[str, BaseException] = {}
_LOCK = threading.Lock()
_TAG = re.compile(r"\[ppl host error ([0-9a-f]{16})\]")


class _OwnErrors(logging.Filter):
    """Drops JAX's log record (with its traceback) of a callback error that steerppl re-raises
    as the user's own exception: the user sees one error, not two tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or _TAG.search(str(exc)) is None


logging.getLogger("jax._src.callback").addFilter(_OwnErrors())


def _stash(exc: BaseException) -> str:
    tag = uuid.uuid4().hex[:16]
    with _LOCK:
        if len(_ERRORS) > 64:  # errors nobody collected (runs that were not ours)
            _ERRORS.clear()
        _ERRORS[tag] = exc
    return tag


def host_map(row_fn: Callable[..., Any], result: Any, *args) -> Any:
    """``row_fn`` applied to each particle's arguments on the host, traced as one callback.

    Args:
        row_fn: takes one particle's arguments as numpy values (each with the shape the
            traced argument has inside the per-particle program) and returns one value per
            output of ``result`` (a tuple when ``result`` is a tuple).
        result: ``jax.ShapeDtypeStruct`` (or a tuple of them) of one particle's outputs.
        *args: traced per-particle arguments.

    Returns:
        The outputs, traced; under ``vmap`` every particle is evaluated in one host call.
    """
    ranks = [np.ndim(a) for a in args]
    multi = isinstance(result, (tuple, list))
    specs: Sequence = tuple(result) if multi else (result,)

    def host(*arrays):
        try:
            arrays = [np.asarray(a) for a in arrays]
            batch = np.broadcast_shapes(*(a.shape[: a.ndim - r] for a, r in zip(arrays, ranks)))
            flat = [np.broadcast_to(a, batch + a.shape[a.ndim - r:]).reshape((-1,) + a.shape[a.ndim - r:])
                    for a, r in zip(arrays, ranks)]
            count = int(np.prod(batch, dtype=np.int64))
            outs = [np.empty((count,) + tuple(s.shape), s.dtype) for s in specs]
            for i in range(count):
                vals = row_fn(*(f[i] for f in flat))
                vals = vals if multi else (vals,)
                for o, v in zip(outs, vals):
                    o[i] = v
            return tuple(o.reshape(batch + o.shape[1:]) for o in outs) if multi else \
                outs[0].reshape(batch + outs[0].shape[1:])
        except Exception as e:  # re-raised as itself by reraise_host_error
            raise RuntimeError(f"[ppl host error {_stash(e)}] {type(e).__name__}: {e}") from e

    return jax.pure_callback(host, result, *args, vmap_method="expand_dims")


def reraise_host_error(exc: BaseException) -> None:
    """If ``exc`` (a JAX runtime error) came from user code inside `host_map`, raises that
    user exception instead (its own type, message and traceback); otherwise returns."""
    m = _TAG.search(str(exc))
    if m is None:
        return
    with _LOCK:
        original = _ERRORS.pop(m.group(1), None)
    if original is not None:
        raise original.with_traceback(original.__traceback__) from None
