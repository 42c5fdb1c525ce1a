"""Regex semantics against Python's ``re`` (C.regex) and ECMA-262 (JSON Schema ``pattern``).

Regression tests for wrong answers found by running public material (issue 16): classes with
two negated shorthands, comment groups, ``\\0``, ECMA ``\\s``, code-point lengths, state bounds.
"""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ppl.stdlib import constraints as C

# Characters that separate the shorthand classes: ASCII and Unicode digits, letters, spaces,
# punctuation, a non-BMP letter and a non-BMP digit.
PROBE = list("09az_AZ \t\n\x0b\x1c-!é") + ["\u00a0", "\u0660", "\u2028", "\u3000", "\uff10",
                                          "\U0001d7ce", "\U00010400", "\u00b2", "\u0130"]


@pytest.mark.parametrize("pattern", [r"[^\S\W]", r"[^\D\S]", r"[^\W\D]", r"[\S\W]", r"[\D\S]",
                                     r"[\W\D]", r"[^\s\d]", r"[\w\s]", r"(?a)[^\S\W]",
                                     r"(?a)[\W\D]", r"(?i)[^\W\d]", r"(?i)[k]", r"(?i)\u0130"])
def test_two_negated_shorthands_match_python_re(pattern):
    c = C.regex(pattern)
    for ch in PROBE + [chr(i) for i in range(0x80)]:
        assert c.accepts(ch) == bool(re.fullmatch(pattern, ch)), (pattern, ch)


def test_class_with_nothing_is_empty():
    # a character that is a space and a word character: none, as in re
    with pytest.raises(ValueError, match="no text"):
        from tests.stdlib.test_constraints import SMALL

        C.regex(r"[^\S\W]").compile(SMALL)
    empty = C.regex(r"[^\S\W]")
    assert not any(empty.accepts(chr(i)) for i in range(0x3000))


def test_comment_group_and_nul_escape():
    c = C.regex(r"(?#c)ab")
    assert c.accepts("ab") and not c.accepts("(?#c)ab") and not c.accepts("a")
    z = C.regex(r"a\0b")
    assert z.accepts("a\x00b") and not z.accepts("ab") and not z.accepts("a0b")
    assert C.regex(r"(?x) a b  # spaced\n").accepts("ab")


def test_unicode_classes_as_re():
    assert C.regex(r"\d+").accepts("\u0660\u0661") and not C.regex(r"(?a)\d+").accepts("\u0660")
    assert C.regex(r"\w").accepts("é") and not C.regex(r"(?a:\w)").accepts("é")
    assert C.regex(r"\s").accepts("\u3000")


def test_ecma_pattern_whitespace_is_unicode():
    c = C.json_schema({"type": "string", "pattern": r"^\S$"})
    assert not c.accepts(json.dumps("\u00a0", ensure_ascii=False))
    assert not c.accepts(json.dumps("\u00a0"))  # escaped form too
    assert not c.accepts(json.dumps("\ufeff", ensure_ascii=False))
    assert c.accepts('"x"') and c.accepts(json.dumps("é"))
    # ECMA \d and \w are ASCII
    d = C.json_schema({"type": "string", "pattern": r"^\d$"})
    assert d.accepts('"7"') and not d.accepts(json.dumps("\u0660", ensure_ascii=False))
    # '.' excludes the four line terminators
    dot = C.json_schema({"type": "string", "pattern": "^.$"})
    assert dot.accepts('"a"') and not dot.accepts(json.dumps("\u2028", ensure_ascii=False))


def test_min_length_counts_code_points():
    one = C.json_schema({"type": "string", "minLength": 1, "maxLength": 1})
    assert one.accepts('"\\ud83d\\udca9"')  # an escaped surrogate pair is one character
    assert one.accepts(json.dumps("💩", ensure_ascii=False)) and one.accepts(json.dumps("💩"))
    assert not C.json_schema({"type": "string", "minLength": 2}).accepts('"\\ud83d\\udca9"')
    assert not one.accepts('"\\ud83d"')  # a lone surrogate is not a character


def test_state_bound_refuses_fast():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="max_states=4096"):
        C.regex(r"(a|b)*a(a|b){22}")
    with pytest.raises(ValueError, match="max_states=4096"):
        C.json_schema({"type": "string", "maxLength": 5000})
    assert time.perf_counter() - t0 < 20.0
    assert C.regex(r"(a|b)*a(a|b){3}", max_states=64).accepts("abbb")


def test_accepts_is_public_on_every_constraint():
    assert C.all_of(C.regex("[ab]+"), C.max_chars(2)).accepts("ab")
    assert not C.all_of(C.regex("[ab]+"), C.max_chars(2)).accepts("abb")
    assert C.stop("\n").accepts("x\n") and not C.stop("\n").accepts("x\ny")


_ALPHA = "ab é0 \n"
_atoms = st.sampled_from(["a", "b", "é", "0", " ", ".", r"\d", r"\w", r"\s", r"\S", r"\W",
                          r"[^\S\W]", r"[\D\s]", r"[a-c]", r"[^a]", r"(?i:A)"])


def _regexes():
    return st.recursive(_atoms, lambda inner: st.one_of(
        st.tuples(inner, inner).map(lambda t: t[0] + t[1]),
        st.tuples(inner, inner).map(lambda t: f"(?:{t[0]}|{t[1]})"),
        inner.map(lambda t: f"(?:{t})*"),
        st.tuples(inner, st.integers(0, 2), st.integers(0, 2)).map(
            lambda t: f"(?:{t[0]}){{{min(t[1], t[2])},{max(t[1], t[2])}}}"),
    ), max_leaves=6)


@settings(max_examples=25, deadline=None)
@given(_regexes(), st.lists(st.text(_ALPHA, max_size=4), min_size=20, max_size=20))
def test_fuzz_regex_against_python_re(pattern, texts):
    c = C.regex(pattern)
    dfa = c.byte_dfa()
    for t in texts:
        want = re.fullmatch(pattern, t) is not None
        assert c.accepts(t) == want and dfa.accepts(t.encode()) == want, (pattern, t)
