"""A JSON schema constraint: the continuation is a JSON record valid under a schema.

Run:  python examples/json_record.py        ppl run examples/json_record.py --json

``C.json_schema`` turns the schema into an automaton over its canonical serialisation
(``json.dumps`` separators, properties in schema order), compiled to a token automaton like
any regex. Proposal: the LM masked to tokens that keep the text a prefix of a valid document;
weight increment: the kept mass ``log Σ_{v allowed} p(v | x_<t)``; target:
``π(x) ∝ p_LM(x) 1[x is a valid document of at most 64 characters]``. The name is drawn where the LM likes names, the enum
value in proportion to the LM's preference among the allowed ones.
"""

import json
import re

import ppl
from ppl.stdlib import constraints as C

MODEL = "tiny"
METHOD = "smc"
PARTICLES = 32
TRIBES = ["Judah", "Levi", "Benjamin", "Dan"]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Z][a-z]{2,8}$"},
        "tribe": {"enum": TRIBES},
        "age": {"type": "integer"},
    },
    "required": ["name", "tribe", "age"],
    "additionalProperties": False,
}


MAX_CHARS = 64


def make_program(lm, max_tokens: int = 56):
    # all_of: one product automaton, so the length bound steers the digits of "age" too
    # (alone, the LM happily writes 20-digit ages: nothing in the schema ends an integer).
    rule = C.all_of(C.json_schema(SCHEMA), C.max_chars(MAX_CHARS))
    return ppl.steer(lm, "And these are the names of the men: ", constraints=[rule],
                     max_tokens=max_tokens)


def check(text: str) -> bool:
    """Independent validation with the json module (not the constraint's own checker)."""
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    return (len(text) <= MAX_CHARS and isinstance(doc, dict) and list(doc) == ["name", "tribe", "age"]
            and isinstance(doc["name"], str) and re.fullmatch("[A-Z][a-z]{2,8}", doc["name"]) is not None
            and doc["tribe"] in TRIBES
            and isinstance(doc["age"], int) and not isinstance(doc["age"], bool))


if __name__ == "__main__":
    from ppl.cli import example_main

    example_main()
