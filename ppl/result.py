"""The result every backend returns."""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ppl.errors import InferenceError

__all__ = ["Result", "InferenceError"]


@dataclasses.dataclass(eq=False)
class Result:
    """Weighted samples of a program's posterior and what the run measured.

    Attributes:
        method: the backend's name.
        tokens: ``int32[N, T]`` generated token ids per sample (padded after ``lengths``).
        lengths: ``int32[N]`` number of generated tokens (EOS included when drawn).
        texts: decoded texts (EOS and special tokens contribute nothing).
        log_weights: ``float[N]`` unnormalised final log-weights.
        weights: ``float[N]`` normalised weights (for MCMC: ``1/N`` per chain sample).
        log_evidence: an estimate of ``log Z``, the log normalising constant of the target
            (``-inf`` if no sample satisfied the program): the log of an unbiased estimate of
            ``Z`` for the particle backends and PIMH; ``None`` where the backend has none
            (particle Gibbs: its conditional sweeps' estimates are biased; their mean is in
            ``extras["conditional_sweeps_log_mean_z"]`` as a diagnostic).
        ess: effective sample size before each step's resampling decision, ``float[steps]``.
        ancestors: ``int32[steps, N]``; ``ancestors[t, i]`` is the particle that particle ``i``
            copied at step ``t`` (identity when nothing was resampled).
        resampled: ``bool[steps]`` whether step ``t`` resampled.
        timings: seconds: ``compile``, ``run`` (device, after compilation), ``total``.
        num_steps: steps the loop actually ran.
        extras: backend-specific data (MCMC chain, acceptance rate, VI losses, ...).
        seed: the seed of the run (an int, or a key's data as a list of ints), set by
            [infer][ppl.infer].
        options: the backend's options as JSON-friendly values, set by [infer][ppl.infer].
        version: the steerppl version that produced the result.

    A result is saved as JSON (never pickle) with [save][ppl.Result.save] and read back with
    [load][ppl.Result.load]; [to_dict][ppl.Result.to_dict] gives the same data as a dict.
    """

    method: str
    tokens: np.ndarray
    lengths: np.ndarray
    texts: list[str]
    log_weights: np.ndarray
    weights: np.ndarray
    log_evidence: float | None
    ess: np.ndarray
    ancestors: np.ndarray
    resampled: np.ndarray
    timings: dict
    num_steps: int
    states: Any = None
    extras: dict = dataclasses.field(default_factory=dict)
    seed: Any = None
    options: dict = dataclasses.field(default_factory=dict)
    version: str = dataclasses.field(default_factory=lambda: _version())

    @property
    def num_particles(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def final_ess(self) -> float:
        w = self.weights
        return float(1.0 / np.sum(w**2)) if np.sum(w) > 0 else 0.0

    def posterior(self) -> dict[str, float]:
        """``{text: probability}``: normalised weights summed over equal texts, most likely first."""
        acc: dict[str, float] = defaultdict(float)
        for text, w in zip(self.texts, self.weights):
            if w > 0:
                acc[text] += float(w)
        return dict(sorted(acc.items(), key=lambda kv: -kv[1]))

    def sample_posterior(self, seed: int = 0) -> str:
        """One text drawn from the weighted samples."""
        rng = np.random.default_rng(seed)
        return self.texts[int(rng.choice(len(self.texts), p=self.weights))]

    def expectation(self, fn) -> float:
        """Weighted mean of ``fn(text)`` under the posterior approximation."""
        return float(sum(w * fn(t) for t, w in zip(self.texts, self.weights) if w > 0))

    def summary(self, top: int = 10) -> str:
        lines = [
            f"method={self.method} particles={self.num_particles} steps={self.num_steps} "
            f"log_evidence={_fmt_evidence(self.log_evidence)} final_ess={self.final_ess:.2f} "
            f"time={self.timings.get('total', float('nan')):.2f}s "
            f"(compile {self.timings.get('compile', float('nan')):.2f}s)"
        ]
        for text, p in list(self.posterior().items())[:top]:
            lines.append(f"  {p:8.4f}  {text!r}")
        return "\n".join(lines)

    def __repr__(self) -> str:  # readable in a terminal and a notebook: no giant arrays
        top = list(self.posterior().items())[:3]
        shown = ", ".join(f"{_short(t)!r}: {p:.3f}" for t, p in top)
        more = len(self.posterior()) - len(top)
        return (
            f"Result(method={self.method!r}, particles={self.num_particles}, "
            f"steps={self.num_steps}, log_evidence={_fmt_evidence(self.log_evidence)}, "
            f"final_ess={self.final_ess:.1f}, top={{{shown}{', ...' if more > 0 else ''}}}"
            f"{f' (+{more} more texts)' if more > 0 else ''})"
        )

    def _repr_html_(self, top: int = 8) -> str:
        """Notebook view: top outputs with probabilities, evidence, an ESS sparkline."""
        rows = []
        for text, p in list(self.posterior().items())[:top]:
            bar = f'<span style="display:inline-block;background:#4a7bd0;height:.7em;width:{max(1, round(120 * p))}px"></span>'
            rows.append(f'<tr><td style="text-align:right;font-variant-numeric:tabular-nums">{p:.4f}</td>'
                        f"<td>{bar}</td><td style=\"font-family:monospace;white-space:pre-wrap\">"
                        f"{html.escape(text)}</td></tr>")
        more = len(self.posterior()) - len(rows)
        if more > 0:
            rows.append(f'<tr><td></td><td></td><td style="color:#777">... {more} more distinct texts</td></tr>')
        t = self.timings
        meta = (f"<b>{html.escape(self.method)}</b> · {self.num_particles} particles · "
                f"{self.num_steps} steps · log evidence {_fmt_evidence(self.log_evidence)} · "
                f"final ESS {self.final_ess:.1f}"
                + (f" · {t['total']:.2f}s" if isinstance(t.get("total"), (int, float)) else ""))
        spark = _sparkline(self.ess, self.num_particles)
        hint = ("" if "history" not in self.extras else
                '<div style="color:#777;font-size:.85em">step-by-step view: '
                "<code>ppl.viz.write_trace(result, \"trace.html\")</code> "
                "(or <code>ppl run ... --trace trace.html</code>)</div>")
        return (f'<div class="steerppl-result"><div>{meta}</div>'
                + (f'<div style="margin:.3em 0">ESS per step {spark}</div>' if spark else "")
                + f'<table style="border-collapse:collapse">{"".join(rows)}</table>{hint}</div>')

    # ---- persistence: JSON, never pickle --------------------------------------------------------

    def to_dict(self) -> dict:
        """Every field as JSON-friendly values (arrays keep their dtype and shape).

        [from_dict][ppl.Result.from_dict] inverts it; values JSON cannot hold (a user state
        object that is not a dict, list, tuple or array) are replaced by their ``repr``.
        """
        out = {"format": _FORMAT}
        for f in dataclasses.fields(self):
            out[f.name] = _encode(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Result":
        """The [Result][ppl.Result] a [to_dict][ppl.Result.to_dict] described."""
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"not a saved steerppl Result (expected format {_FORMAT!r}, got "
                             f"{data.get('format') if isinstance(data, dict) else type(data).__name__!r}).")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {"method", "tokens", "texts", "weights"} - set(data)
        if missing:
            raise ValueError(f"saved Result lacks the field(s) {sorted(missing)}.")
        return cls(**{k: _decode(v) for k, v in data.items() if k in names})

    def save(self, path: str | Path) -> Path:
        """Writes the result to ``path`` as JSON (texts, tokens, weights, evidence, ESS history,
        ancestry, timings, method, options, seed, version, extras); read it back with
        [Result.load][ppl.Result.load]."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), allow_nan=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Result":
        """Reads a result written by [save][ppl.Result.save]."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a saved steerppl Result (not JSON: {e}).") from None
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def __eq__(self, other) -> bool:
        """Field-by-field equality, arrays by value and dtype (NaN equal to NaN)."""
        if not isinstance(other, Result):
            return NotImplemented
        return all(_equal(getattr(self, f.name), getattr(other, f.name))
                   for f in dataclasses.fields(self))

    __hash__ = None


_FORMAT = "steerppl.Result/1"


def _version() -> str:
    try:
        from ppl import __version__
    except ImportError:  # during the package's own import
        return "unknown"
    return __version__


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _sparkline(ess, n: int, width: int = 160, height: int = 28) -> str:
    """The ESS curve as an inline SVG (empty string without steps)."""
    ess = np.asarray(ess, np.float64)
    if ess.size == 0 or n <= 0:
        return ""
    xs = np.linspace(1, width - 1, ess.size) if ess.size > 1 else np.array([width / 2])
    ys = height - 1 - (height - 2) * np.clip(np.nan_to_num(ess) / n, 0, 1)
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
    return (f'<svg width="{width}" height="{height}" style="vertical-align:middle;background:#fafafa;'
            f'border:1px solid #ddd"><title>ESS per step (max {n})</title>'
            f'<polyline fill="none" stroke="#4a7bd0" stroke-width="1.5" points="{pts}"/></svg>')


def _float(x: float):
    return x if math.isfinite(x) else {"__float__": repr(x)}


def _encode(x):
    """JSON-friendly form of a field value; arrays as ``{"__array__", "dtype", "shape"}``."""
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, (int, np.integer)) and not isinstance(x, np.bool_):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _float(float(x))
    if isinstance(x, np.bool_):
        return bool(x)
    if hasattr(x, "__array__") and hasattr(x, "dtype") and hasattr(x, "shape"):
        a = np.asarray(x)
        if a.dtype.kind in "biuf":
            flat = a.reshape(-1).tolist()
            if a.dtype.kind == "f":
                flat = [_float(v) for v in flat]
            return {"__array__": flat, "dtype": a.dtype.str, "shape": list(a.shape)}
        if a.dtype.kind in "US":
            return {"__array__": a.reshape(-1).tolist(), "dtype": a.dtype.str, "shape": list(a.shape)}
        return {"__repr__": repr(x)}
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return {"__namedtuple__": type(x).__name__,
                "fields": {k: _encode(v) for k, v in zip(x._fields, x)}}
    if isinstance(x, tuple):
        return {"__tuple__": [_encode(v) for v in x]}
    if isinstance(x, list):
        return [_encode(v) for v in x]
    if isinstance(x, dict):
        if all(isinstance(k, str) for k in x) and not any(k.startswith("__") for k in x):
            return {k: _encode(v) for k, v in x.items()}
        return {"__items__": [[_encode(k), _encode(v)] for k, v in x.items()]}
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {"__dataclass__": type(x).__name__,
                "fields": {f.name: _encode(getattr(x, f.name)) for f in dataclasses.fields(x)}}
    return {"__repr__": repr(x)}


def _decode(x):
    if isinstance(x, list):
        return [_decode(v) for v in x]
    if not isinstance(x, dict):
        return x
    if "__float__" in x:
        return float(x["__float__"])
    if "__array__" in x:
        dtype = np.dtype(x["dtype"])
        flat = [float(v["__float__"]) if isinstance(v, dict) else v for v in x["__array__"]]
        return np.asarray(flat, dtype=dtype).reshape(x["shape"])
    if "__tuple__" in x:
        return tuple(_decode(v) for v in x["__tuple__"])
    if "__namedtuple__" in x:
        import collections

        fields = x["fields"]
        cls = collections.namedtuple(x["__namedtuple__"], list(fields))
        return cls(*(_decode(v) for v in fields.values()))
    if "__items__" in x:
        return {_hashable(_decode(k)): _decode(v) for k, v in x["__items__"]}
    if "__dataclass__" in x:  # the class itself is not stored (no pickle): its fields as a dict
        return {k: _decode(v) for k, v in x["fields"].items()}
    if "__repr__" in x:
        return x["__repr__"]
    return {k: _decode(v) for k, v in x.items()}


def _hashable(k):
    return tuple(k) if isinstance(k, list) else k


def _equal(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return (isinstance(a, tuple) == isinstance(b, tuple) and len(a) == len(b)
                and all(_equal(x, y) for x, y in zip(a, b)))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _fmt_evidence(x) -> str:
    return "None" if x is None else f"{x:.4f}"


def normalized(log_weights: np.ndarray) -> tuple[np.ndarray, float]:
    """``(weights, log mean weight)`` from log-weights, robust to ``-inf``."""
    lw = np.asarray(log_weights, np.float64)
    m = np.max(lw)
    if not np.isfinite(m):
        return np.zeros_like(lw), -math.inf
    w = np.exp(lw - m)
    s = w.sum()
    return w / s, float(m + np.log(s) - np.log(len(lw)))
