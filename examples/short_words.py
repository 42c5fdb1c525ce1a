"""Hard constraint (the LLaMPPL paper's first task): every word has at most five letters.

Run:  python examples/short_words.py            (embedded model, SMC, 32 particles)
      ppl run examples/short_words.py --method smc_steer --particles 16 --model PATH

The constraint is compiled to a token automaton over the model's vocabulary; the LM masked to
the tokens that keep every word short is the proposal, and each step's weight is the
probability mass the mask kept, so the weighted particles target the exact posterior
p(text | every word <= 5 letters), not the distorted "masked decoding" distribution.
"""

import re

import ppl
from ppl.stdlib import constraints as C

MODEL = "tiny"
METHOD = "smc"
PARTICLES = 32
MAX_LETTERS = 5


def make_program(lm, max_tokens: int = 24):
    return ppl.steer(
        lm,
        prompt="The king said unto them,",
        constraints=[C.max_word_length(MAX_LETTERS)],
        max_tokens=max_tokens,
    )


def check(text: str) -> bool:
    return all(len(w) <= MAX_LETTERS for w in re.findall(r"[A-Za-z]+", text))


if __name__ == "__main__":
    from ppl.cli import example_main

    example_main()
