"""Importance sampling: every particle runs the program's proposal to the end, no resampling.

Each particle's final log-weight is ``log p(x) + Σ factors - log q(x)`` (twists cancel), and
``log Z_hat = log mean_i exp(logw_i)`` is an unbiased estimate of ``Z`` (in ``Z``, not
``log Z``). It is SMC with the resampling threshold at zero, so it shares SMC's kernel and
runner (a learned proposal, ``proposal_params``, applies the same way).
"""

from __future__ import annotations

from ppl.inference import resampling as R
from ppl.inference import smc
from ppl.inference.base import Backend

__all__ = ["init", "build_kernel", "BACKEND"]

init = smc.init


def build_kernel(setup, config, params, hooks: smc.ProposalHooks = smc.ProposalHooks()):
    """``step(key, state) -> (state, info)`` that never resamples."""
    return smc.build_kernel(setup, config, params, R.adaptive(ess_threshold=0.0), hooks)


BACKEND = Backend(
    name="is",
    family="particle",
    options=smc.ISOptions,
    make_runner=smc.make_runner,
    to_result=smc.population_result("is"),
    params=smc._params,
    validate=smc._validate,
    summary="importance sampling with the program's proposal (or a learned one)",
)
