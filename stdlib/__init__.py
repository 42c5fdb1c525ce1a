"""The standard library: constraints (hard) and potentials (soft)."""

from ppl.stdlib import constraints
from ppl.stdlib.base import DEAD, Constraint, TokenAutomaton
from ppl.stdlib.constraints import (
    all_of,
    allowed_words,
    banned_words,
    canonical_tokens,
    json_schema,
    max_chars,
    max_tokens,
    max_word_length,
    max_words,
    must_contain,
    regex,
    stop,
)

__all__ = [
    "Constraint",
    "TokenAutomaton",
    "DEAD",
    "constraints",
    "regex",
    "json_schema",
    "max_word_length",
    "allowed_words",
    "banned_words",
    "must_contain",
    "stop",
    "max_tokens",
    "max_chars",
    "max_words",
    "all_of",
    "canonical_tokens",
]
