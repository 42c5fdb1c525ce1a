"""JSON extraction from a chat prompt: the assistant's reply is a record valid under a schema.

Run:  python examples/chat_json.py --model smollm2-135m-instruct     (a real instruct model;
      fetch it once with `ppl models get smollm2-135m-instruct`; about a minute on a CPU)
      python examples/chat_json.py        (the embedded model, which has no chat template:
      the same task as a plain text prompt)

The prompt is a conversation formatted by the checkpoint's own chat template
(``ppl.steer(lm, messages=...)``), so the model answers as the assistant it was trained to
be. ``C.json_schema`` compiles the schema to a token automaton (canonical ``json.dumps``
form, properties in schema order) intersected with a length bound. Proposal: the LM masked to
tokens that keep the reply a prefix of a valid record; weight increment: the kept mass
``log Σ_{v allowed} p(v | x_<t)``; target: ``π(x) ∝ p_LM(x | chat) 1[x is a valid record]``,
the model's own answer distribution restricted to well-formed answers. The report gives the
posterior mass of the records that got every field right.
"""

import json
import re

import ppl
from ppl.stdlib import constraints as C

MODEL = "tiny"
METHOD = "smc"
PARTICLES = 16
TEXT = "Maria Lopez is a 34-year-old nurse who lives in Madrid."
FACTS = {"name": "Maria Lopez", "age": 34, "job": "nurse", "city": "Madrid"}
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Z][a-z]+( [A-Z][a-z]+)*$"},
        "age": {"type": "integer"},
        "job": {"type": "string", "pattern": "^[A-Za-z]+( [A-Za-z]+)*$"},
        "city": {"type": "string", "pattern": "^[A-Z][a-z]+( [A-Z][a-z]+)*$"},
    },
    "required": ["name", "age", "job", "city"],
    "additionalProperties": False,
}
MAX_CHARS = 96


def make_program(lm, max_tokens: int = 40):
    rule = C.all_of(C.json_schema(SCHEMA), C.max_chars(MAX_CHARS))
    if lm.chat_template is None:  # a base model: the same request as plain text
        return ppl.steer(lm, f"{TEXT}\nThe facts as JSON: ", constraints=[rule], max_tokens=max_tokens)
    messages = [
        {"role": "system", "content": "You extract facts from text and answer with JSON only."},
        {"role": "user", "content": f"Extract the name, age, job and city from this text as JSON.\n"
                                    f"Text: {TEXT}"},
    ]
    return ppl.steer(lm, messages=messages, constraints=[rule], max_tokens=max_tokens)


def check(text: str) -> bool:
    """Independent validation with the json module (not the constraint's own checker)."""
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    return (len(text) <= MAX_CHARS and isinstance(doc, dict) and list(doc) == list(FACTS)
            and all(isinstance(doc[k], str) for k in ("name", "job", "city"))
            and isinstance(doc["age"], int) and not isinstance(doc["age"], bool)
            and re.fullmatch(r"[A-Z][a-z]+( [A-Z][a-z]+)*", doc["name"]) is not None
            and re.fullmatch(r"[A-Za-z]+( [A-Za-z]+)*", doc["job"]) is not None
            and re.fullmatch(r"[A-Z][a-z]+( [A-Z][a-z]+)*", doc["city"]) is not None)


def report(lm, result) -> dict:
    """Posterior mass of records with every field right, and per field."""
    post = result.posterior()
    docs = {t: json.loads(t) for t in post if check(t)}
    same = lambda a, b: a.lower() == b.lower() if isinstance(a, str) else a == b  # noqa: E731
    out = {"all fields right": sum(p for t, p in post.items()
                                   if t in docs and all(same(docs[t][k], v) for k, v in FACTS.items()))}
    for k, v in FACTS.items():
        out[f"{k} right"] = sum(p for t, p in post.items() if t in docs and same(docs[t][k], v))
    return {k: round(v, 3) for k, v in out.items()}


if __name__ == "__main__":
    from ppl.cli import example_main

    example_main()
