"""A length in words: one sentence of six to ten words, ending with a period.

Run:  python examples/word_count.py

Three rules of two kinds. ``max_words(10)`` and ``stop(".", require=True)`` are token
automata combined with ``all_of`` (a product automaton): the proposal is the LM masked to
tokens that keep both satisfiable and each step's weight increment is the kept mass
``log Σ_{v allowed} p(v | x_<t)``. The lower bound is a plain Python predicate, checked on the host
when a particle finishes (``condition``: weight unchanged if it holds, ``-inf`` if not).
Target: ``π(x) ∝ p_LM(x) 1[6 <= words(x) <= 10] 1[x ends at its first "."]``. Host predicates
are exact but cannot steer: particles learn they failed only at the end, which is why upper
bounds belong in automata.
"""

import re

import ppl
from ppl.stdlib import constraints as C

MODEL = "tiny"
METHOD = "smc"
PARTICLES = 32
MIN_WORDS, MAX_WORDS = 6, 10


def at_least_min_words(text: str) -> bool:
    return len(re.findall(r"[A-Za-z]+", text)) >= MIN_WORDS


def make_program(lm, max_tokens: int = 24):
    rules = C.all_of(C.max_words(MAX_WORDS), C.stop(".", require=True))
    return ppl.steer(lm, "And Jesus answered and said unto him,", constraints=[rules, at_least_min_words],
                     max_tokens=max_tokens)


def check(text: str) -> bool:
    n = len(re.findall(r"[A-Za-z]+", text))
    return MIN_WORDS <= n <= MAX_WORDS and text.endswith(".") and text.count(".") == 1


if __name__ == "__main__":
    from ppl.cli import example_main

    example_main()
