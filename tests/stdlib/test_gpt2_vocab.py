"""Constraints on the real 50k GPT-2 byte-level vocabulary: build time and semantics."""

from __future__ import annotations

import time

import numpy as np

from ppl.stdlib import DEAD, constraints as C
from ppl.stdlib import _automata


def _walk(aut, ids):
    table = np.asarray(aut.transitions)
    s = aut.start
    for t in ids:
        s = int(table[s, t])
    return s


def _ids(vocab, *pieces: bytes):
    index = {b: i for i, b in enumerate(vocab.token_bytes) if b}
    return [index[p] for p in pieces]


def test_date_regex_builds_fast(gpt2):
    _automata._length_groups(gpt2)  # per-vocabulary preprocessing, shared by all constraints
    t0 = time.perf_counter()
    # [0-9], not \d: in Python's re (and here) \d is every Unicode decimal digit
    c = C.regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
    aut = c.compile(gpt2)
    elapsed = time.perf_counter() - t0
    print(f"date regex on GPT-2: {elapsed * 1000:.0f} ms, {aut.num_states} states")
    assert elapsed < 1.0
    ok = _walk(aut, _ids(gpt2, b"20", b"24", b"-", b"01", b"-", b"15"))
    assert bool(np.asarray(aut.accepting)[ok])
    allowed0 = np.asarray(aut.allowed(aut.init_state()))
    assert allowed0[_ids(gpt2, b"2012")[0]] and not allowed0[_ids(gpt2, b" 2012")[0]]
    assert not allowed0[gpt2.eos_token_id]
    # pruning: from "2012-01-1" exactly one more digit: "15" (two digits) is excluded
    s = _walk(aut, _ids(gpt2, b"2012", b"-", b"01", b"-", b"1"))
    allowed = np.asarray(aut.allowed(np.int32(s)))
    assert allowed[_ids(gpt2, b"5")[0]] and not allowed[_ids(gpt2, b"15")[0]]
    assert allowed.sum() == 10


def test_non_ascii_anything_else(gpt2):
    """'[^a]+' over bytes: multi-byte characters split across tokens are allowed and valid."""
    c = C.regex(r"[^a]+")
    aut = c.compile(gpt2)
    byte_tok = {b[0]: i for i, b in enumerate(gpt2.token_bytes) if len(b) == 1}
    table, acc = np.asarray(aut.transitions), np.asarray(aut.accepting)
    for text, want in [("héllo wörld ✓ 😀", True), ("é", True), ("bad", False), ("日本", True)]:
        data = text.encode()
        s = aut.start
        for b in data:  # one byte per token: every character is split
            s = table[s, byte_tok[b]]
        assert bool(acc[s]) == want == c.check(text), text
    # an incomplete character is live but not accepting; a stray continuation byte is dead
    s = table[aut.start, byte_tok[0xE2]]
    assert s != DEAD and not acc[s]
    assert table[aut.start, byte_tok[0x80]] == DEAD
    assert table[aut.start, byte_tok[0xFF]] == DEAD


def test_word_rules_on_gpt2(gpt2):
    aut = C.max_word_length(4).compile(gpt2)
    allowed = np.asarray(aut.allowed(aut.init_state()))
    ok, long_, spaced = _ids(gpt2, b" the", b" there", b"the")
    assert allowed[ok] and allowed[spaced] and not allowed[long_]
    # "the" + "re" crosses the limit only together
    s = _walk(aut, [spaced])
    assert not np.asarray(aut.allowed(np.int32(s)))[_ids(gpt2, b"re")[0]]
    assert np.asarray(aut.allowed(np.int32(s)))[_ids(gpt2, b"y")[0]]
    banned = C.banned_words(["cat"]).compile(gpt2)
    s = _walk(banned, _ids(gpt2, b" cat"))
    assert s != DEAD and not bool(np.asarray(banned.accepting)[s])  # "cat" then EOS: rejected
    s2 = _walk(banned, _ids(gpt2, b" cat", b"s"))
    assert bool(np.asarray(banned.accepting)[s2])  # "cats" is fine
    assert _walk(banned, _ids(gpt2, b" cat", b" ")) == DEAD


def test_build_times_recorded(gpt2):
    """Not a bound: prints build times of typical constraints for docs/constraints.md."""
    _automata._length_groups(gpt2)
    cases = [
        C.regex(r"(0?[1-9]|1[0-2])/(0?[1-9]|[12][0-9]|3[01])/[0-9]{4}"),
        C.regex(r"[A-Z][a-z]+( [a-z]+){0,9}\."),
        C.json_schema({"type": "object", "properties": {"name": {"type": "string"},
                                                        "age": {"type": "integer"}},
                       "required": ["name", "age"]}),
        C.max_word_length(5),
        C.banned_words(["the", "a", "an"]),
        C.must_contain(["red", "blue", "green"]),
        C.stop(["\n\n", "###"]),
        C.max_chars(100),
        C.max_words(50),
        C.max_tokens(100),
    ]
    for c in cases:
        t0 = time.perf_counter()
        aut = c.compile(gpt2)
        print(f"{c.name}: {(time.perf_counter() - t0) * 1000:.0f} ms, {aut.num_states} states")
