"""`_automata.lift` walks the token trie (``method="trie"``); the tables must be identical to
the previous per-token implementation (``method="columns"``), on a synthetic vocabulary
(prefix-sharing tokens, multi-byte UTF-8, all 256 single bytes, empty and special tokens)
and on GPT-2's when available."""

from __future__ import annotations

import numpy as np
import pytest

from ppl.models.base import Vocab
from ppl.stdlib import _automata as A, constraints as C

CONSTRAINTS = {
    "date": lambda: C.regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"),
    "words": lambda: C.regex(r"( ?[a-zé]+)*\."),
    "person": lambda: C.json_schema({"type": "object",
                                     "properties": {"name": {"type": "string", "maxLength": 6},
                                                    "age": {"type": "integer", "minimum": 0}},
                                     "required": ["name"], "additionalProperties": False}),
    "free": lambda: C.json_schema({"type": "array", "items": True}, max_depth=2),
}


def _synthetic() -> Vocab:
    rng = np.random.default_rng(0)
    alphabet = list(b'abcz019 -.,:{}[]"\\\n') + list("é日".encode())
    toks = [bytes([i]) for i in range(256)] + [b""]
    while len(toks) < 3000:
        n = int(rng.integers(1, 9))
        t = bytes(rng.choice(alphabet, size=n).tolist())
        toks.append(t)
        toks.append(t + b"a")  # shared prefixes
    eos = 256
    return Vocab.from_bytes(toks, eos, special_ids=(257,))


def _same(dfa, vocab, name):
    a = A.lift(dfa, vocab, name, method="columns")
    b = A.lift(dfa, vocab, name, method="trie")
    assert a[2] == b[2]
    for x, y in zip((a[0], a[1], a[3]), (b[0], b[1], b[3])):
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)


@pytest.mark.parametrize("name", list(CONSTRAINTS))
def test_trie_lift_identical_on_synthetic_vocab(name):
    _same(CONSTRAINTS[name]().byte_dfa(), _synthetic(), name)


@pytest.mark.parametrize("name", ["date", "person"])
def test_trie_lift_identical_on_gpt2(gpt2, name):
    _same(CONSTRAINTS[name]().byte_dfa(), gpt2, name)


def test_lift_method_checked():
    with pytest.raises(ValueError, match="method must be"):
        A.lift(C.regex("a").byte_dfa(), _synthetic(), "x", method="fast")
