"""The table of backends ``ppl.infer(method=...)`` dispatches to."""

from __future__ import annotations

from ppl.api import register_method
from ppl.inference import driver, importance, smc, smc_steer

__all__ = ["run_is", "run_smc", "run_smc_steer", "run_pimh", "run_particle_gibbs", "run_vi"]


@register_method("is")
def run_is(program, *, particles, seed, proposal_params=None):
    if proposal_params is not None:
        from ppl.inference import vi

        return vi.run_with_proposal("is", program, seed, particles, proposal_params)
    return driver.run_population("is", program, seed, particles,
                                 lambda s, n: importance.make_runner(s, n), ())


@register_method("smc")
def run_smc(program, *, particles, seed, resampling="stratified", ess_threshold=0.5,
            islands=1, exchange_every=0, rejuvenate=0, rejuvenate_at="resample",
            proposal_params=None):
    if not 0.0 <= float(ess_threshold) <= 1.0:
        raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold}.")
    if int(rejuvenate) < 0:
        raise ValueError(f"rejuvenate must be >= 0, got {rejuvenate}.")
    if int(rejuvenate) > 0 or proposal_params is not None:
        from ppl.inference import vi

        return vi.run_with_proposal(
            "smc", program, seed, particles, proposal_params, resampling=resampling,
            ess_threshold=float(ess_threshold), islands=int(islands),
            exchange_every=int(exchange_every), rejuvenate=int(rejuvenate),
            rejuvenate_at=rejuvenate_at)
    return driver.run_population(
        "smc", program, seed, particles,
        lambda s, n: smc.make_runner(s, n, resampling=resampling, ess_threshold=float(ess_threshold),
                                     islands=int(islands), exchange_every=int(exchange_every)),
        (resampling, float(ess_threshold), int(islands), int(exchange_every)))


@register_method("smc_steer")
def run_smc_steer(program, *, particles, seed, num_beams=3):
    return driver.run_population(
        "smc_steer", program, seed, particles,
        lambda s, n: smc_steer.make_runner(s, n, num_beams=int(num_beams)), (int(num_beams),))


# ---- MCMC and variational backends -----------------------------------------------------------

@register_method("pimh")
def run_pimh(program, *, particles, seed, steps=100, burn_in=0, chains=1, resampling="stratified",
             ess_threshold=0.5):
    from ppl.inference import pimh

    return pimh.run(program, particles=particles, seed=seed, steps=steps, burn_in=burn_in,
                    chains=chains, resampling=resampling, ess_threshold=ess_threshold)


@register_method("particle_gibbs")
def run_particle_gibbs(program, *, particles, seed, steps=100, burn_in=0, chains=1,
                       resampling="stratified", ess_threshold=0.5, ancestor_sampling=True):
    from ppl.inference import particle_gibbs

    return particle_gibbs.run(program, particles=particles, seed=seed, steps=steps,
                              burn_in=burn_in, chains=chains, resampling=resampling,
                              ess_threshold=ess_threshold, ancestor_sampling=ancestor_sampling)


@register_method("vi")
def run_vi(program, *, particles, seed, vi_steps=200, learning_rate=0.05, objective="vimco",
           vi_particles=32, final_method="is", proposal="auto", initial_params=None,
           resampling="stratified", ess_threshold=0.5):
    from ppl.inference import vi

    return vi.run(program, particles=particles, seed=seed, vi_steps=vi_steps,
                  learning_rate=learning_rate, objective=objective, vi_particles=vi_particles,
                  final_method=final_method, proposal=proposal, initial_params=initial_params,
                  resampling=resampling, ess_threshold=ess_threshold)
