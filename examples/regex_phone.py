"""A regular expression constraint: a phone number in a fixed format ("(212) 555-0142.").

Run:  python examples/regex_phone.py

Same mechanism as ``regex_date.py`` with a pattern whose every character is pinned down
except the digits: the proposal is the LM masked to tokens that keep the text a prefix of a
match (multi-digit tokens included), the weight increment is the kept mass
``log Σ_{v allowed} p(v | x_<t)``, and the target is ``π(x) ∝ p_LM(x) 1[x matches]``. The digits
are therefore drawn in proportion to how likely the LM finds them, not uniformly.
"""

import re

import ppl
from ppl.stdlib import constraints as C

MODEL = "tiny"
METHOD = "smc"
PARTICLES = 32
PATTERN = r" \(\d{3}\) \d{3}-\d{4}\."


def make_program(lm, max_tokens: int = 20):
    return ppl.steer(lm, "For all enquiries, write to the office or call", constraints=[C.regex(PATTERN)],
                     max_tokens=max_tokens)


def check(text: str) -> bool:
    return re.fullmatch(PATTERN, text) is not None


if __name__ == "__main__":
    from ppl.cli import example_main

    example_main()
