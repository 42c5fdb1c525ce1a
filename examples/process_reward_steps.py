"""Particle filtering per reasoning step with a process reward, written with ``steer``'s units.

Run:  python examples/process_reward_steps.py     ppl run examples/process_reward_steps.py --particles 64

The task of ``reasoning_steps.py`` (add ``ADDENDS`` writing the running totals, `` 7, 12, 21,
24.``), but said at the level a user thinks in: a *unit* is one step (the text ends with ``,``
or ``.``), so SMC resamples only when a particle has just finished a step; the process reward
model (an exact local verifier: step ``k`` is right iff it equals the previous written total
plus ``a_k``) scores the solution so far, ``-λ · #wrong completed steps``, and the score of
the last unit is the likelihood (``reward_aggregate="last"``, the paper's "last"
aggregation): target ``π(x) ∝ p_LM(x) 1[format] exp(-λ · #wrong steps)``, the same as
reasoning_steps'. The score's change enters the weights as soon as a step is complete (as a
factor), so intermediate resampling sees it; nothing is compared mid-number. (A step whose
comma arrives inside a token such as ``", 18"`` is scored at the next boundary: scoring the
whole prefix, not only "the step just finished", makes a missed boundary only a delay.) As there, the tiny model cannot add: the
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


def wrong_steps(text: str) -> int:
    """Completed steps that are not ``previous written total + a_k``."""
    prev, bad = 0, 0
    for k, value in enumerate(steps(text)[: len(ADDENDS)]):
        bad += value != prev + ADDENDS[k]
        prev = value
    return bad


def step_reward(text: str) -> float:
    """The PRM's log-score of the solution so far."""
    return -LAMBDA * wrong_steps(text)


def make_program(lm, max_tokens: int = 16, messages=None):
    """The PRM program on ``PROMPT``, or on a chat (``messages``, for an instruct checkpoint)."""
    src = {"prompt": PROMPT} if messages is None else {"messages": messages}
    return ppl.steer(lm, **src, constraints=[C.regex(PATTERN)], max_tokens=max_tokens,
                     unit=step_ended, process_reward=step_reward, reward_aggregate="last")


def check(text: str) -> bool:
    """The format (guaranteed by the regex constraint)."""
    return re.fullmatch(PATTERN, text) is not None


def correct(text: str) -> bool:
    """The exact checker: every running total right (so the last one is the sum)."""
    return check(text) and wrong_steps(text) == 0


if __name__ == "__main__":
    from ppl.cli import example_main

    example_main()
