"""Bounds on ``log Z`` from both directions (the bidirectional estimate of Zhao et al. 2024,
"Probabilistic Inference in Language Models via Twisted Sequential Monte Carlo").

* **Lower:** an SMC run's ``log Z_hat`` has ``E[log Z_hat] <= log Z`` (Jensen on the unbiased
  ``Z_hat``), so the mean over independent runs is a stochastic lower bound.
* **Upper:** a conditional SMC sweep whose retained sequence is an *exact* posterior sample
  draws its particle system from SMC's extended target (SMC's law reweighted by
  ``Z_hat / Z``), under which ``E[1 / Z_hat] = P_SMC(Z_hat > 0) / Z <= 1 / Z`` (equality when
  an unconditional sweep never loses every particle); by Jensen
  ``E[log Z_hat] >= log Z - log P_SMC(Z_hat > 0) >= log Z``, so the mean over sweeps is a
  stochastic upper bound. Plain CSMC is used (no ancestor sampling), for which the identity
  is exact (tests/properties/test_csmc.py).

The gap between the two says how far the inference is from exact at that particle count;
each side is reported with its Monte Carlo standard error.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np

__all__ = ["LogZBounds", "log_z_bounds"]


class LogZBounds(NamedTuple):
    """``lower <= log Z <= upper`` in expectation (each a mean over runs).

    Attributes:
        lower, lower_se: mean and standard error of SMC's ``log Z_hat`` over the runs.
        upper, upper_se: mean and standard error of the conditional sweeps' ``log Z_hat``.
        lower_runs, upper_runs: the individual ``log Z_hat`` values.
    """

    lower: float
    lower_se: float
    upper: float
    upper_se: float
    lower_runs: np.ndarray
    upper_runs: np.ndarray

    @property
    def gap(self) -> float:
        """``upper - lower``: an estimate of how loose the two sides are (0 when exact)."""
        return self.upper - self.lower

    def __str__(self) -> str:
        return (f"{self.lower:.4f} ± {self.lower_se:.4f} <= log Z <= "
                f"{self.upper:.4f} ± {self.upper_se:.4f}")


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, np.float64)
    if not np.all(np.isfinite(x)):  # a run whose particles all died: log Z_hat = -inf
        return float(np.mean(x)), math.inf
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.inf
    return float(x.mean()), se


def log_z_bounds(program, samples: Sequence, particles: int = 32, seed: int = 0,
                 runs: int | None = None, **options: Any) -> LogZBounds:
    """A lower and an upper bound on ``log Z`` at ``particles`` particles, with MC errors.

    Args:
        program: the [Program][ppl.Program].
        samples: exact posterior samples (texts or token-id sequences, e.g. from
            ``ppl.testing.enumerate_posterior``, a rejection sampler, or known answers of a
            problem whose posterior you can sample); one conditional sweep per sample. With
            approximate samples the upper side is only a heuristic.
        particles: ``N`` of every run.
        seed: runs use seeds ``seed, seed + 1, ...``.
        runs: SMC runs for the lower side (default: as many as samples).
        **options: ``resampling`` / ``ess_threshold`` of both kinds of run.

    Returns:
        [LogZBounds][ppl.inference.bounds.LogZBounds].

    Raises:
        ValueError: fewer than two samples (no standard error).
    """
    from ppl.api import infer
    from ppl.errors import InferenceError

    def smc_log_z(r):
        try:
            return infer(program, method="smc", particles=particles, seed=seed + r,
                         **options).log_evidence
        except InferenceError:  # every particle died: Z_hat = 0
            return -math.inf

    samples = list(samples)
    if len(samples) < 2:
        raise ValueError("log_z_bounds needs at least 2 posterior samples (one sweep each) "
                         "for a standard error.")
    runs = len(samples) if runs is None else int(runs)
    low = np.array([smc_log_z(r) for r in range(runs)])
    up = []
    for i, x in enumerate(samples):
        ret = x if isinstance(x, str) else [int(t) for t in x]
        res = infer(program, method="csmc", particles=particles, seed=seed + runs + i,
                    retained=ret, ancestor_sampling=False, **options)
        up.append(float(res.extras["conditional_sweeps_log_mean_z"]))
    lo_m, lo_se = _mean_se(low)
    up_m, up_se = _mean_se(np.array(up))
    return LogZBounds(lo_m, lo_se, up_m, up_se, low, np.array(up))
