"""Particle filtering over reasoning steps with a process reward (inference-time scaling).

Run:  python examples/reasoning_steps.py        ppl run examples/reasoning_steps.py --particles 64

After "A Probabilistic Inference Approach to Inference-Time Scaling of LLMs using Particle-Based
Monte Carlo Methods": a solution is a sequence of steps, a process reward model (PRM) scores
each step, and a particle filter uses the PRM as an approximate likelihood, resampling after
every step instead of searching for a single best path.

The task is toy arithmetic with an exact checker: add ``ADDENDS`` by writing the running totals
(`` 7, 12, 21, 24.``); step ``k`` is the ``k``-th total. Honest disclosure: the tiny model cannot
add, so the *scorer does the work*. The LM only proposes digits (a regex constraint fixes the
format; the LM masked to it is the proposal, weight = kept mass); the PRM is an exact, local
step verifier: step ``k`` is correct iff its value equals the previous *written* total plus
``a_k`` (it never looks at the final answer). Target:
``π(x) ∝ p_LM(x) 1[format] exp(-λ · #wrong steps)``, implemented as an end potential
``-λ · #wrong steps`` plus the same score, extended to the digits of the step being written
(``-λ`` once they stop being a prefix of the expected total), as a twist: intermediate weights
carry the step rewards, resampling drops particles with a wrong step right after its digit, and
the twists cancel at the end. Importance sampling with the same particles targets the same
``π`` but only reweights at the end, so it rarely holds a fully correct chain; ``report``
compares the posterior mass on the correct answer under both. What this shows is the inference
mechanics of PRM-guided particle filtering, not arithmetic ability.
"""

import re

import ppl
from ppl.stdlib import constraints as C
from ppl.stdlib import potentials

MODEL = "tiny"
METHOD = "smc"
PARTICLES = 64
ADDENDS = (7, 5, 9, 3)
LAMBDA = 8.0
PATTERN = r" \d{1,2}(, \d{1,2}){%d}\." % (len(ADDENDS) - 1)
PROMPT = "Add " + " + ".join(map(str, ADDENDS)) + ", writing each running total:"


def _steps(text: str) -> tuple[list[int], str]:
    """Completed step values and the digits of the step being written."""
    done = [int(m) for m in re.findall(r"(\d+)[,.]", text)]
    tail = re.search(r"(\d*)$", text).group(1) if not text.endswith((",", ".")) else ""
    return done, tail


def wrong_steps(text: str) -> int:
    """The PRM: completed steps that are not ``previous written total + a_k``."""
    done, _ = _steps(text)
    prev, bad = 0, 0
    for k, value in enumerate(done[: len(ADDENDS)]):
        bad += value != prev + ADDENDS[k]
        prev = value
    return bad


def step_score(text: str) -> float:
    """Twist: ``-λ`` per wrong completed step, and ``-λ`` if the digits of the current step
    already cannot become the expected total."""
    done, tail = _steps(text)
    score = -LAMBDA * wrong_steps(text)
    k = len(done)
    if tail and k < len(ADDENDS):
        expected = str((done[-1] if done else 0) + ADDENDS[k])
        if not expected.startswith(tail):
            score -= LAMBDA
    return score


def final_score(text: str) -> float:
    return -LAMBDA * wrong_steps(text)


def make_program(lm, max_tokens: int = 16):
    return ppl.steer(
        lm, PROMPT, constraints=[C.regex(PATTERN)], max_tokens=max_tokens,
        potentials=[potentials.Potential(final_score, when="end", name="prm"),
                    potentials.Potential(step_score, when="twist", name="prm_prefix")])


def check(text: str) -> bool:
    """The format (guaranteed by the regex constraint)."""
    return re.fullmatch(PATTERN, text) is not None


def correct(text: str) -> bool:
    """The exact checker: every running total right (so the last one is the sum)."""
    done, _ = _steps(text)
    return check(text) and wrong_steps(text) == 0 and done[-1] == sum(ADDENDS)


def accuracy(result) -> float:
    """Posterior probability of a correct solution."""
    return float(sum(w for t, w in zip(result.texts, result.weights) if correct(t)))


REPORT_SEEDS = 8


def report(lm, result) -> dict:
    """Posterior mass on the correct answer: IS vs SMC at ``N`` particles, and SMC at ``N/2``
    (the particle-count scaling the paper is about), each over seeds ``0 .. REPORT_SEEDS - 1``.

    One run either holds a correct chain or not (its mass is then near 1 or 0), and with 64
    particles SMC holds one in roughly 40% of seeds on the tiny model (it must propose the
    right number token at every step), so a single seed says little; the mean over seeds and
    the number of runs with mass > 0.5 do."""
    program = make_program(lm, max_tokens=result.tokens.shape[1])
    n = result.num_particles
    rows = []
    for method, particles in (("is", n), ("smc", max(n // 2, 1)), ("smc", n)):
        runs = [ppl.infer(program, method=method, particles=particles, seed=s)
                for s in range(REPORT_SEEDS)]
        acc = [accuracy(r) for r in runs]
        rows.append({"method": method, "particles": particles,
                     "mean P(correct)": sum(acc) / len(acc),
                     "runs with P(correct) > 0.5": f"{sum(a > 0.5 for a in acc)}/{len(acc)}",
                     "mean log Z": sum(r.log_evidence for r in runs) / len(runs),
                     "time s (all seeds)": sum(r.timings["total"] for r in runs)})
    return {"posterior mass on the correct answer": rows}


if __name__ == "__main__":
    from ppl.cli import example_main

    example_main()
