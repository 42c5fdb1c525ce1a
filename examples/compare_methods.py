"""One program, every backend: IS, SMC, SMC-steer, PIMH, particle Gibbs and VI side by side.

Run:  python examples/compare_methods.py        ppl run examples/compare_methods.py --json

The program is the short-words task (every word at most four letters) with a short budget.
Its target is ``π(x) ∝ p_LM(x) 1[every word <= 4 letters]`` whatever the backend; what changes
is how the weighted samples are produced. IS/SMC/SMC-steer: the proposal is the masked LM and
each step's weight increment the kept mass ``log Σ_{v allowed} p(v | x_<t)``; SMC resamples
when the ESS drops below ``N/2``; SMC-steer expands every particle into several children and
keeps ``N`` of them without replacement. PIMH runs independent SMC sweeps and accepts a sweep's
sample with probability ``min(1, Ẑ*/Ẑ)``; particle Gibbs runs conditional SMC sweeps that keep
the current sample as a retained particle. VI first fits a per-token proposal bias by
stochastic gradients of an importance-weighted bound, then runs IS with it (weights
``log p - log q_φ``). Every row reports the log-evidence estimate (``log P_LM(the rule holds)``;
for MCMC the mean over sweeps), the final ESS of the weights (for MCMC samples are equally
weighted: the acceptance rate is shown instead) and wall-clock time including compilation.
Methods missing from ``ppl.methods()`` are skipped with a message.
"""

import time

import ppl
from ppl.stdlib import constraints as C

MODEL = "tiny"
METHOD = "smc"
PARTICLES = 16
METHODS = ("is", "smc", "smc_steer", "pimh", "particle_gibbs", "vi")
#: small settings so the whole table runs in about a minute on two CPU cores
METHOD_OPTIONS = {
    "smc_steer": {"num_beams": 2},
    "pimh": {"steps": 8},
    "particle_gibbs": {"steps": 8},
    "vi": {"vi_steps": 20, "vi_particles": 8},
}
MCMC = ("pimh", "particle_gibbs")


def make_program(lm, max_tokens: int = 10):
    return ppl.steer(lm, "The king said unto them,", constraints=[C.max_word_length(4)],
                     max_tokens=max_tokens)


def check(text: str) -> bool:
    import re

    return all(len(w) <= 4 for w in re.findall(r"[A-Za-z]+", text))


def run_all(lm, particles: int, max_tokens: int, seed: int = 0, methods=METHODS,
            done: dict | None = None) -> tuple[list[dict], dict]:
    """Runs ``make_program`` under each method; returns the table rows and the results."""
    available = set(ppl.methods())
    rows, results = [], dict(done or {})
    for method in methods:
        if method not in available:
            rows.append({"method": method, "note": "not available in this version (skipped)"})
            continue
        t0 = time.perf_counter()
        res = results.get(method)
        if res is None:
            res = ppl.infer(make_program(lm, max_tokens=max_tokens), method=method,
                            particles=particles, seed=seed, **METHOD_OPTIONS.get(method, {}))
            results[method] = res
            wall = time.perf_counter() - t0
        else:
            wall = res.timings["total"]
        row = {"method": method, "log Z": res.log_evidence,
               "final ESS": None if method in MCMC else res.final_ess,
               "acceptance": res.extras.get("acceptance_rate"),
               "distinct outputs": len(res.posterior()), "time s": wall}
        rows.append(row)
    return rows, results


def report(lm, result) -> dict:
    rows, _ = run_all(lm, result.num_particles, int(result.tokens.shape[1]),
                      done={result.method: result})
    return {"methods": rows}


if __name__ == "__main__":
    from ppl.cli import example_main

    example_main()
