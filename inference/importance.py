"""Importance sampling: every particle runs the program's proposal to the end, no resampling.

Each particle's final log-weight is ``log p(x) + Σ factors - log q(x)`` (twists cancel), and
``log Z_hat = log mean_i exp(logw_i)`` is an unbiased estimate of ``Z`` (in ``Z``, not
``log Z``). It is SMC with the resampling threshold at zero, so it shares SMC's kernel.
"""

from __future__ import annotations

from ppl.inference import _engine as E
from ppl.inference import smc

__all__ = ["init", "build_kernel", "make_runner"]

init = smc.init


def build_kernel(setup: E.Setup, params):
    """``step(key, state) -> (state, info)`` that never resamples."""
    return smc.build_kernel(setup, params, ess_threshold=0.0)


def make_runner(setup: E.Setup, num_particles: int):
    def runner(key, params):
        return smc.run_loop(key, setup, params, num_particles, build_kernel(setup, params))

    return runner
