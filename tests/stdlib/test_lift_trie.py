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


def _min_steps_reference(transitions, accepting):
    """The previous `_min_steps` (Bellman-Ford relaxation over the dense successor matrix)."""
    from ppl.stdlib.base import DEAD, _UNREACHABLE

    s = transitions.shape[0]
    succ = np.zeros((s, s), bool)
    succ[np.repeat(np.arange(s), transitions.shape[1]), transitions.reshape(-1)] = True
    succ[:, DEAD] = False
    dist = np.where(accepting, 0, _UNREACHABLE).astype(np.int64)
    for _ in range(s):
        via = np.where(succ, dist[None, :], _UNREACHABLE).min(axis=1) + 1
        new = np.minimum(dist, via)
        if np.array_equal(new, dist):
            break
        dist = new
    dist[DEAD] = _UNREACHABLE
    return np.minimum(dist, _UNREACHABLE).astype(np.int32)


def test_min_steps_equal_to_reference():
    from ppl.stdlib.base import _min_steps

    rng = np.random.default_rng(1)
    for trial in range(30):
        s, v = int(rng.integers(2, 40)), int(rng.integers(1, 12))
        t = rng.integers(0, s, size=(s, v)) * (rng.random((s, v)) < 0.4)
        t[0] = 0
        acc = rng.random(s) < 0.15
        acc[0] = bool(trial % 2)  # a (nonsensical) accepting dead row must not matter
        got, want = _min_steps(t, acc), _min_steps_reference(t, acc)
        assert got.dtype == want.dtype and np.array_equal(got, want), trial
    table, acc, _, columns = A.lift(CONSTRAINTS["person"]().byte_dfa(), _synthetic(), "person")
    assert np.array_equal(_min_steps(table, acc), _min_steps_reference(table, acc))


def _bfs_reference(src, dst, n, start):
    """The previous queue-based search of `prune`."""
    order = np.argsort(src, kind="stable")
    s_, d_ = src[order], dst[order]
    starts = np.searchsorted(s_, np.arange(n + 1))
    reach = np.zeros(n, bool)
    reach[start] = True
    bfs = [start]
    k = 0
    while k < len(bfs):
        s = bfs[k]
        k += 1
        for t in d_[starts[s] : starts[s + 1]]:
            if not reach[t]:
                reach[t] = True
                bfs.append(int(t))
    return np.asarray(bfs), reach


def _coreach_reference(src, dst, n, seeds, allowed):
    order = np.argsort(dst, kind="stable")
    s_, d_ = src[order], dst[order]
    starts = np.searchsorted(d_, np.arange(n + 1))
    found = seeds.copy()
    stack = list(np.flatnonzero(found))
    while stack:
        s = stack.pop()
        for t in s_[starts[s] : starts[s + 1]]:
            if not found[t] and allowed[t]:
                found[t] = True
                stack.append(int(t))
    return found


def test_prune_searches_equal_to_reference():
    rng = np.random.default_rng(2)
    for trial in range(40):
        n = int(rng.integers(2, 60))
        table = rng.integers(0, n, size=(n, int(rng.integers(1, 6)))) * (rng.random((n, 1)) < 0.8)
        table[0] = 0
        src, dst = A._edges(table)
        start = int(rng.integers(1, n)) if n > 1 else 0
        got, want = A._bfs_order(src, dst, n, start), _bfs_reference(src, dst, n, start)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), trial
        seeds = (rng.random(n) < 0.2) & got[1]
        assert np.array_equal(A._coreachable(src, dst, n, seeds, got[1]),
                              _coreach_reference(src, dst, n, seeds, got[1])), trial
