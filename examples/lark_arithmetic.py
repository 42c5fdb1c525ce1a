"""A context-free constraint: the continuation is an arithmetic expression (a Lark grammar).

Run:  python examples/lark_arithmetic.py

Balanced parentheses are not regular, so this grammar cannot be a token automaton. The Lark
constraint checks prefixes with Lark's incremental LALR parser on the host (one batched
``pure_callback`` per step) and draws each token by rejection from the LM's distribution
restricted to the tokens that keep the text a prefix of a sentence (EOS only after a complete
sentence). The weight increment is an unbiased estimate ``Ẑ_t`` of the kept mass
``Z_t = Σ_{v valid} p(v | x_<t)``, drawn independently of the token; with random but unbiased
weights IS and SMC still target ``π(x) ∝ p_LM(x) 1[x ∈ L(grammar)]`` exactly. A second, device
constraint (``max_chars``) keeps expressions short; device masks apply first and their kept
mass is exact.
"""

import ppl
from ppl.stdlib import constraints as C

try:  # the public name; until it lands, the implementation module
    from ppl.stdlib.constraints import lark as _lark
except ImportError:  # pragma: no cover - depends on the stdlib version
    from ppl.stdlib._lark import LarkConstraint as _lark

MODEL = "tiny"
METHOD = "smc"
PARTICLES = 16
GRAMMAR = r"""
start: " " sum "."
?sum: product | sum ("+" | "-") product
?product: atom | product ("*" | "/") atom
?atom: NUMBER | "(" sum ")"
NUMBER: /[1-9][0-9]?/
"""


def make_program(lm, max_tokens: int = 14):
    return ppl.steer(lm, "He counted the men of war, and the number was",
                     constraints=[_lark(GRAMMAR), C.max_chars(max_tokens)], max_tokens=max_tokens)


def check(text: str) -> bool:
    """Parsed again by a fresh Lark parser (Earley, not the constraint's LALR checker)."""
    import lark

    try:
        lark.Lark(GRAMMAR, parser="earley").parse(text)
    except lark.exceptions.LarkError:
        return False
    return True


if __name__ == "__main__":
    from ppl.cli import example_main

    example_main()
