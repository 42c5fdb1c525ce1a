"""The table of backends ``ppl.infer(method=...)`` dispatches to."""

from __future__ import annotations

from ppl.api import register_method
from ppl.inference import driver, importance, smc, smc_steer

__all__ = ["run_is", "run_smc", "run_smc_steer"]


@register_method("is")
def run_is(program, *, particles, seed):
    return driver.run_population("is", program, seed, particles,
                                 lambda s, n: importance.make_runner(s, n), ())


@register_method("smc")
def run_smc(program, *, particles, seed, resampling="stratified", ess_threshold=0.5):
    if not 0.0 <= float(ess_threshold) <= 1.0:
        raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold}.")
    return driver.run_population(
        "smc", program, seed, particles,
        lambda s, n: smc.make_runner(s, n, resampling=resampling, ess_threshold=float(ess_threshold)),
        (resampling, float(ess_threshold)))


@register_method("smc_steer")
def run_smc_steer(program, *, particles, seed, num_beams=3):
    return driver.run_population(
        "smc_steer", program, seed, particles,
        lambda s, n: smc_steer.make_runner(s, n, num_beams=int(num_beams)), (int(num_beams),))
