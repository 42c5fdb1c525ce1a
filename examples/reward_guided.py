"""Reward-guided generation with a Python potential, against best-of-N at equal cost.

Run:  python examples/reward_guided.py        ppl run examples/reward_guided.py --particles 64

The reward is a sentiment lexicon score ``r(x) = Σ_words lexicon[word]`` computed in plain Python
on the host (``jax.pure_callback``, one call per step for all particles). Target:
``π(x) ∝ p_LM(x) exp(β r(x))``, the LM tilted towards joyful words (``β = BETA``). The same
function scores every prefix as a *twist*: at step ``t`` the weight gains
``β r(x_≤t) - β r(x_<t)`` (the twist of the previous step is removed), so SMC resamples towards
prefixes that already score well; at the end the twist is removed and the end potential
``β r(x)`` added, so the twists cancel and the target is exactly ``π``. Proposal: the plain LM,
so without twists the weights would be ``exp(β r(x))`` at the end only. The baseline, best-of-N,
draws ``N`` texts from the LM (method ``is`` on the unweighted program) and keeps the one with the
highest reward. Both use ``N`` particles for the same number of steps: the same number of LM
token evaluations (``N x steps``, one batched forward per step). ``report`` prints both: the
mean reward of each method's output distribution, the best reward seen, and each method's
answer (SMC: its most probable text; best-of-N: its pick).
"""

import numpy as np

import ppl
from ppl.inference.baselines import best_of_n
from ppl.stdlib import potentials

MODEL = "tiny"
METHOD = "smc"
PARTICLES = 32
BETA = 1.5
PROMPT = "And the people said,"
LEXICON = {
    "joy": 2, "rejoice": 2, "glad": 2, "love": 2, "peace": 2, "praise": 1.5, "blessed": 1.5,
    "sing": 1.5, "good": 1, "mercy": 1, "light": 1, "life": 1, "hope": 1, "comfort": 1.5,
    "death": -2, "wrath": -2, "evil": -2, "curse": -2, "slay": -2, "sin": -1.5, "fear": -1,
    "blood": -1, "wicked": -1.5, "destroy": -1.5, "dead": -1.5, "sword": -1,
}


def reward(text: str) -> float:
    """The lexicon score ``r(x)`` (without ``β``)."""
    return potentials.lexicon_potential(LEXICON)(text)


def make_program(lm, max_tokens: int = 20):
    return ppl.steer(
        lm, PROMPT, max_tokens=max_tokens,
        potentials=[potentials.lexicon_potential(LEXICON, weight=BETA, when="end"),
                    potentials.lexicon_potential(LEXICON, weight=BETA, when="twist")])


def compare(lm, result, seed: int = 1) -> dict:
    """Best-of-N with as many LM token evaluations as ``result`` used, and both rewards."""
    n, t = result.num_particles, result.tokens.shape[1]
    plain = ppl.steer(lm, PROMPT, max_tokens=t)
    best_text, best_score, bon = best_of_n(plain, reward, particles=n, seed=seed)
    prior_scores = np.array([reward(x) for x in bon.texts])
    smc_scores = np.array([reward(x) for x in result.texts])
    top = max(result.posterior().items(), key=lambda kv: kv[1])[0]

    def short(text: str, n: int = 40) -> str:
        return text if len(text) <= n else text[: n - 1] + "…"

    return {
        "LM token evaluations (steered)": n * result.num_steps,
        "LM token evaluations (best-of-N)": n * bon.num_steps,
        "comparison": [
            {"method": "steered SMC", "mean reward": float(np.dot(result.weights, smc_scores)),
             "max reward": float(smc_scores[result.weights > 0].max()),
             "answer": short(top), "its reward": reward(top),
             "time s": result.timings["total"]},
            {"method": f"best-of-{n}", "mean reward": float(prior_scores.mean()),
             "max reward": best_score, "answer": short(best_text),
             "its reward": best_score, "time s": bon.timings["total"]},
        ],
    }


def report(lm, result) -> dict:
    return compare(lm, result)


if __name__ == "__main__":
    from ppl.cli import example_main

    example_main()
