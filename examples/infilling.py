"""Infilling (the LLaMPPL paper's second task): fill the gaps between fixed pieces of text.

Run:  python examples/infilling.py          ppl run examples/infilling.py --particles 64

The text is ``segment_0 + gap_1 + segment_1 + gap_2 + segment_2``; the first segment is the
prompt. [ppl.stdlib.potentials.infill][] draws each gap's length ``L ~ Uniform{1..max_gap}``,
draws the gap's tokens from the LM with EOS masked out, and then *observes* every token of the
next fixed segment instead of pasting it in. Weights: for a gap token the proposal is the LM
restricted to non-EOS tokens, so the increment is the kept mass ``log(1 - p(EOS | x_<t))``; for
a segment token ``y`` the increment is ``log p(y | x_<t)``. Hence
``w ∝ Π p(gap tokens, segment tokens | everything before, no EOS) / Π q`` and the weighted
particles target ``π(gaps, L) ∝ Π U(L) p_LM(gaps, segments)``: gaps after which the fixed text is
likely win, which pasting the segments after unconstrained gaps cannot achieve.
"""

import ppl
from ppl.stdlib import potentials

MODEL = "tiny"
METHOD = "smc"
PARTICLES = 32
SEGMENTS = ["In the beginning God created", " and the earth.", " And the earth was"]


def make_program(lm, max_gap: int = 4):
    return potentials.infill(lm, SEGMENTS, max_gap=max_gap)


def check(text: str) -> bool:
    """The fixed segments appear, in order, each after a non-empty gap, and the text ends
    with the last one."""
    pos = 0
    for seg in SEGMENTS[1:]:
        i = text.find(seg, pos + 1)
        if i <= pos:
            return False
        pos = i + len(seg)
    return text.endswith(SEGMENTS[-1])


if __name__ == "__main__":
    from ppl.cli import example_main

    example_main()
