"""The result every backend returns."""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Any

import numpy as np

from ppl.errors import InferenceError

__all__ = ["Result", "InferenceError"]


@dataclasses.dataclass
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

    def __repr__(self) -> str:  # keep notebooks readable: no giant arrays
        return (
            f"Result(method={self.method!r}, particles={self.num_particles}, "
            f"log_evidence={_fmt_evidence(self.log_evidence)}, distinct_texts={len(self.posterior())})"
        )


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
