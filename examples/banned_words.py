"""Banned words: continue a verse of the King James Bible without its commonest words.

Run:  python examples/banned_words.py

``C.banned_words`` is a token automaton over a trie of the banned words (case-insensitive
here); a token is masked when it would complete a banned whole word (``"the"`` is banned,
``"there"`` is not). Proposal: the masked LM; weight increment: the kept mass
``log Σ_{v allowed} p(v | x_<t)``; target: ``π(x) ∝ p_LM(x) 1[no banned word]``. On the KJV-trained
model ``the``/``and``/``of`` carry a lot of mass, so the weights vary a lot between particles
and SMC resamples often.
"""

import re

import ppl
from ppl.stdlib import constraints as C

MODEL = "tiny"
METHOD = "smc"
PARTICLES = 32
BANNED = ["the", "and", "of", "unto", "LORD", "God"]


def make_program(lm, max_tokens: int = 20):
    return ppl.steer(lm, "And Moses said unto the people,",
                     constraints=[C.banned_words(BANNED, ignore_case=True)], max_tokens=max_tokens)


def check(text: str) -> bool:
    banned = {w.lower() for w in BANNED}
    return not any(w.lower() in banned for w in re.findall(r"[A-Za-z]+", text))


if __name__ == "__main__":
    from ppl.cli import example_main

    example_main()
