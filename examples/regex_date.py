"""A regular expression constraint: the continuation is a date ("on March 3, 1612.").

Run:  python examples/regex_date.py        ppl run examples/regex_date.py --method smc_steer

``C.regex`` compiles the pattern to a byte DFA and lifts it to a token automaton over the
model's vocabulary (table ``int32[states, V]`` on device, pruned so that a token is allowed only
if an accepting state stays reachable). The proposal is the LM masked to the allowed tokens;
each step's weight increment is the mass the mask kept, ``log Σ_{v allowed} p(v | x_<t)``, so the
product of increments is ``p_LM(x) / q(x)`` and the particles target
``π(x) ∝ p_LM(x) 1[x matches]`` exactly; ``log Z`` estimates ``log P_LM(the text matches)``.
"""

import re

import ppl
from ppl.stdlib import constraints as C

MODEL = "tiny"
METHOD = "smc"
PARTICLES = 32
MONTHS = ("January|February|March|April|May|June|July|August|September|October|November|"
          "December")
PATTERN = rf" ({MONTHS}) ([1-9]|[12][0-9]|3[01]), 1[5-9][0-9][0-9]\."


def make_program(lm, max_tokens: int = 16):
    return ppl.steer(lm, "And the decree was signed on", constraints=[C.regex(PATTERN)],
                     max_tokens=max_tokens)


def check(text: str) -> bool:
    return re.fullmatch(PATTERN, text) is not None


if __name__ == "__main__":
    from ppl.cli import example_main

    example_main()
