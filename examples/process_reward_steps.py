"""Particle filtering per reasoning step with a process reward, written with ``steer``'s units.

Run:  python examples/process_reward_steps.py     ppl run examples/process_reward_steps.py --particles 64

The task of ``reasoning_steps.py`` (add ``ADDENDS`` writing the running totals, `` 7, 12, 21,
24.``), but said at the level a user thinks in: a *unit* is one step (the text ends with ``,``
or ``.``), so SMC resamples only when a particle has just finished a step; the process reward
model (an exact local verifier: the step just completed equals the previous written total
plus ``a_k``) scores each completed step with log-score ``-λ · [wrong]``, and the scores
multiply (``reward_aggregate="product"``) into the likelihood: target
``π(x) ∝ p_LM(x) 1[format] exp(-λ · #wrong steps)``, the same as reasoning_steps'. Each step's
score enters the weights as soon as the step is complete (as a factor), so intermediate
resampling sees it; nothing is compared mid-number. As there, the tiny model cannot add: the
scorer does the work, and what this shows is the mechanics (units, process rewards,
``anneal="entropy"`` keeps more distinct chains alive when the scorer is sharp).
"""

import re

import ppl
from ppl.stdlib import constraints as C

MODEL = "tiny"
METHOD = "smc"
PARTICLES = 64
ADDENDS = (7, 5, 9, 3)
LAMBDA = 8.0
PATTERN = r" \d{1,2}(, \d{1,2}){%d}\." % (len(ADDENDS) - 1)
PROMPT = "Add " + " + ".join(map(str, ADDENDS)) + ", writing each running total:"


def steps(text: str) -> list[int]:
    """The values of the completed steps."""
    return [int(m) for m in re.findall(r"(\d+)[,.]", text)]


def step_ended(text: str) -> bool:
    """The unit: a step ends with a comma or the final period."""
    return text.endswith((",", "."))


def step_reward(text: str) -> float:
    """Log-score of the step just completed (0 when the text does not end a step)."""
    done = steps(text)
    if not step_ended(text) or not done or len(done) > len(ADDENDS):
        return 0.0
    k = len(done) - 1
    prev = done[k - 1] if k else 0
    return 0.0 if done[k] == prev + ADDENDS[k] else -LAMBDA


def make_program(lm, max_tokens: int = 16):
    return ppl.steer(lm, PROMPT, constraints=[C.regex(PATTERN)], max_tokens=max_tokens,
                     unit=step_ended, process_reward=step_reward, reward_aggregate="product")


def check(text: str) -> bool:
    """The format (guaranteed by the regex constraint)."""
    return re.fullmatch(PATTERN, text) is not None


def correct(text: str) -> bool:
    """The exact checker: every running total right (so the last one is the sum)."""
    done, prev = steps(text), 0
    if not check(text):
        return False
    for k, v in enumerate(done):
        if v != prev + ADDENDS[k]:
            return False
        prev = v
    return True


if __name__ == "__main__":
    from ppl.cli import example_main

    example_main()
