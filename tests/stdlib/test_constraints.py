"""Token automata vs. their host-side reference checks, by exhaustive enumeration.

For every token sequence up to a length bound over a small vocabulary (multi-character
tokens, leading/trailing spaces, a UTF-8 character split across two byte tokens), the
automaton must accept exactly the sequences the reference ``check_ids`` accepts, and a
sequence may only go dead when no extension of it is accepted (the pruning guarantee).
"""

from __future__ import annotations

import collections
import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from ppl.models.base import Vocab
from ppl.models.ngram import NGramLM
from ppl.stdlib import DEAD, constraints as C

# id 0 is EOS; ids 12/13 are the two bytes of "é" (a token boundary inside a character).
SMALL_TOKENS = [b"", b"a", b"b", b"ab", b"ba", b" ", b" a", b"a ", b"1", b"-", b"\n",
                "é".encode(), b"\xc3", b"\xa9", b"A"]
SMALL = Vocab.from_bytes(SMALL_TOKENS, eos_token_id=0)

JSON_TOKENS = [b"", b"{", b"}", b'"', b"a", b"1", b", ", b'"a"', b"[", b"]", b": ",
               b"-", b'{"a": ', b"1}", b'", "', b'["', b'"]', b"null", b'\\"']
JSON_VOCAB = Vocab.from_bytes(JSON_TOKENS, eos_token_id=0)


def host(aut):
    return np.asarray(aut.transitions), np.asarray(aut.accepting)


def shortest_completion(table, acc, state, text_ids):
    """A shortest token path from ``state`` to an accepting state (BFS), or None."""
    prev = {state: None}
    queue = collections.deque([state])
    while queue:
        s = queue.popleft()
        if acc[s]:
            path = []
            while prev[s] is not None:
                s, t = prev[s]
                path.append(t)
            return path[::-1]
        for t in text_ids:
            n = int(table[s, t])
            if n != DEAD and n not in prev:
                prev[n] = (s, t)
                queue.append(n)
    return None


def assert_exact(constraint, vocab, max_len):
    aut = constraint.compile(vocab)
    table, acc = host(aut)
    text = vocab.text_mask()
    text_ids = [i for i in range(vocab.size) if text[i]]
    # the contract's structural invariants
    assert table.dtype == np.int32 and table.shape[1] == vocab.size
    assert (table[DEAD] == DEAD).all() and not acc[DEAD]
    assert (table[:, ~text] == DEAD).all(), "special/empty tokens must go dead"
    witnessed = set()
    stack = [((), aut.start)]
    n_accepted = 0
    while stack:
        seq, s = stack.pop()
        expected = constraint.check_ids(seq, vocab)
        got = bool(acc[s])
        assert got == expected, (
            f"{constraint.name}: {[vocab.token_bytes[t] for t in seq]} automaton={got} "
            f"check={expected}")
        n_accepted += expected
        if s != DEAD and s not in witnessed:
            # pruning: a live state always has an accepted completion, confirmed by check
            witnessed.add(s)
            path = shortest_completion(table, acc, s, text_ids)
            assert path is not None, f"{constraint.name}: live state {s} cannot accept"
            assert constraint.check_ids(list(seq) + path, vocab), (constraint.name, seq, path)
        if len(seq) < max_len:
            for t in text_ids:
                # once dead, every extension must be rejected by check (verified above on pop)
                stack.append((seq + (t,), int(table[s, t]) if s != DEAD else DEAD))
    assert witnessed, f"{constraint.name}: start state is dead"
    return n_accepted


SMALL_CASES = [
    C.regex(r"(ab|b)*a?"),
    C.regex(r"[ab]+( [ab]+)*"),
    C.regex(r"\d-\d|-?1"),
    C.regex(r"[^a]*"),  # "anything else": includes é (2 bytes) and \n, excludes 'a'
    C.regex(r".+"),  # '.' excludes only \n
    C.regex(r"(?i)a+b"),
    C.regex(r"é+a?"),
    C.regex(r"\w+\s?"),
    C.regex(r"a{2,3}|b{0,1}"),
    C.regex(r""),
    C.regex(r"^ab$"),
    C.regex("\\u00e9|\\x41"),
    # byte-live but token-dead prefixes (no token spells 'z'): pruning must cut them
    C.regex(r"(az)*b"),
    C.allowed_words(["az", "b"]),
    C.must_contain(["b"], word_chars="abz"),
    C.max_word_length(2),
    C.max_word_length(0),
    C.allowed_words(["a", "ab"]),
    C.allowed_words(["ab", "b"], ignore_case=True),
    C.banned_words(["ab"]),
    C.banned_words(["a", "BA"], ignore_case=True),
    C.must_contain(["ab"]),
    C.must_contain(["a", "ba"]),
    C.max_word_length(1, word_chars="ab1"),
    C.stop(["b a", "\n"]),
    C.stop(["ab"], require=True),
    C.stop(["é"]),
    C.max_tokens(2),
    C.max_chars(3),
    C.max_words(1),
    C.all_of(C.max_word_length(2), C.must_contain(["b"])),
    C.all_of(C.regex(r"[ab ]*"), C.max_tokens(3), C.stop(["b"])),
]


@pytest.mark.parametrize("constraint", SMALL_CASES, ids=lambda c: c.name)
def test_exhaustive_small_vocab(constraint):
    assert_exact(constraint, SMALL, max_len=4)


JSON_CASES = [
    C.json_schema({"type": "integer"}),
    C.json_schema({"type": "object", "properties": {"a": {"type": "integer"}}}),
    C.json_schema({"type": "array", "items": {"type": "string"}, "maxItems": 2}),
    C.json_schema({"enum": ["a", 10, None]}),
]


@pytest.mark.parametrize("constraint", JSON_CASES, ids=lambda c: c.name)
def test_exhaustive_json_vocab(constraint):
    assert_exact(constraint, JSON_VOCAB, max_len=4)


def test_ngram_vocabulary():
    strings = ["<eos>", "a", "b", "ab", " ", "1", "-", " b"]
    v = len(strings)
    lm = NGramLM(np.zeros(v), np.zeros((v, v)), eos_token_id=0, token_strings=strings)
    for c in [C.regex(r"(a|b)+( (a|b)+)?"), C.banned_words(["b"]), C.max_words(2)]:
        assert assert_exact(c, lm.vocab, max_len=4) > 0


def test_device_api_matches_host_table():
    c = C.must_contain(["ab"])
    aut = c.compile(SMALL)
    table, acc = host(aut)
    for s in range(aut.num_states):
        allowed = np.asarray(aut.allowed(jnp.int32(s)))
        expect = table[s] != DEAD
        expect[SMALL.eos_token_id] = acc[s]
        np.testing.assert_array_equal(allowed, expect)
        for t in range(SMALL.size):
            nxt = int(aut.advance(jnp.int32(s), jnp.int32(t)))
            if t == SMALL.eos_token_id:
                assert nxt == (s if acc[s] else DEAD)
            else:
                assert nxt == table[s, t]
    assert int(aut.init_state()) == aut.start


def test_compile_is_cached_per_vocab():
    c = C.regex("a+")
    assert c.compile(SMALL) is c.compile(SMALL)
    other = Vocab.from_bytes(SMALL_TOKENS, eos_token_id=0)
    assert c.compile(other) is not c.compile(SMALL)


def test_stop_final_state():
    c = C.stop(["ab"])
    aut = c.compile(SMALL)
    s = aut.start
    for t in (1, 2):  # "a", "b"
        s = int(aut.advance(jnp.int32(s), jnp.int32(t)))
    assert bool(aut.accepting_state(s)) and bool(aut.is_final(s))
    assert not bool(aut.is_final(aut.start))
    allowed = np.asarray(aut.allowed(jnp.int32(s)))
    assert allowed.sum() == 1 and allowed[SMALL.eos_token_id]
    # a token overshooting the stop string is excluded: "a" then "ba" would continue after "ab"
    s1 = int(aut.advance(jnp.int32(aut.start), jnp.int32(1)))
    assert not bool(aut.allowed(jnp.int32(s1))[4])


def test_reference_checks_on_text():
    assert C.max_word_length(3).check("the cat sat, bravely") is False
    assert C.max_word_length(3).check("the cat sat: ok") is True
    assert C.allowed_words(["the", "cat"]).check("the cat, the cat!") is True
    assert C.allowed_words(["the", "cat"]).check("the cats") is False
    assert C.banned_words(["cat"]).check("concatenate cats") is True
    assert C.banned_words(["cat"]).check("a cat.") is False
    assert C.banned_words(["cat"], ignore_case=True).check("A CAT") is False
    assert C.must_contain(["cat", "dog"]).check("dog and cat") is True
    assert C.must_contain(["cat", "dog"]).check("dogs and cat") is False
    assert C.stop(["\n\n"]).check("hello\n\n") is True
    assert C.stop(["\n\n"]).check("hello\n\nworld") is False
    assert C.stop(["\n\n"]).check("hello") is True
    assert C.stop(["\n\n"], require=True).check("hello") is False
    assert C.max_chars(3).check("héé") is True and C.max_chars(2).check("héé") is False
    assert C.max_words(2).check("one, two!") is True and C.max_words(2).check("a b c") is False
    assert C.max_tokens(2).check_ids([1, 2], SMALL) and not C.max_tokens(2).check_ids([1, 2, 3], SMALL)
    assert not C.max_tokens(5).check_ids([0], SMALL)  # EOS/specials never inside text
    with pytest.raises(TypeError, match="check_ids"):
        C.max_tokens(2).check("ab")


@pytest.mark.parametrize(
    "pattern,pos,fragment",
    [
        ("a(", 1, "missing ), unterminated subpattern"),
        ("[b-a]", 1, "bad character range"),
        ("ab\\bc", 2, "word boundary"),
        ("a^b", 1, "anchor"),
        ("x(?=a)b", 1, "lookaround"),
        ("(a)\\1", 3, "backreference"),
        ("a**", 2, "multiple repeat"),
        ("\\p{L}", 0, "bad escape"),
        ("(a)(?(1)a|b)", 3, "conditional"),
        ("a\\Z", 1, "anchor"),
        ("a*+", 2, "possessive"),
    ],
)
def test_invalid_regex_reports_position(pattern, pos, fragment):
    with pytest.raises(ValueError) as info:
        C.regex(pattern)
    msg = str(info.value)
    assert f"position {pos}" in msg and fragment in msg, msg


@pytest.mark.parametrize(
    "factory,arg,fragment",
    [
        (C.banned_words, ["ice cream"], "not a word character"),
        (C.allowed_words, [""], "non-empty"),
        (C.allowed_words, "cat", "list of words"),
        (C.must_contain, [f"w{'a' * i}"[1:] + "x" for i in range(9)], "exceed the limit"),
        (C.stop, [""], "non-empty"),
        (C.max_word_length, -1, "non-negative"),
        (C.max_tokens, 1.5, "non-negative int"),
    ],
)
def test_invalid_arguments(factory, arg, fragment):
    with pytest.raises(ValueError, match=fragment):
        factory(arg)


def test_unsatisfiable_over_vocab_raises():
    with pytest.raises(ValueError, match="no text"):
        C.regex("z").compile(SMALL)  # no token spells 'z'
    with pytest.raises(ValueError, match="no text"):
        C.all_of(C.max_chars(1), C.must_contain(["ab"])).compile(SMALL)


def test_all_of_state_limit():
    big = C.all_of(C.max_chars(40), C.max_words(20), C.max_tokens(30), max_states=50)
    with pytest.raises(ValueError, match="max_states=50"):
        big.compile(SMALL)


def test_all_combinations_agree_with_parts():
    parts = [C.regex(r"[ab ]*"), C.banned_words(["ab"]), C.max_tokens(3)]
    conj = C.all_of(*parts)
    auts = [p.compile(SMALL) for p in parts]
    caut = conj.compile(SMALL)
    ids = [1, 2, 3, 4, 5, 6]
    for seq in itertools.product(ids, repeat=3):
        states = [a.start for a in auts]
        cs = caut.start
        for t in seq:
            states = [int(np.asarray(a.transitions)[s, t]) for a, s in zip(auts, states)]
            cs = int(np.asarray(caut.transitions)[cs, t])
        want = all(bool(np.asarray(a.accepting)[s]) for a, s in zip(auts, states))
        assert bool(np.asarray(caut.accepting)[cs]) == want


@pytest.mark.parametrize(
    "pattern",
    [r"[^é]+", r"(?i)[a-cé]+x?", r".{2,4}", r"\W\w*", r"(a|é|日)+[^\s]", r"[\u00e0-\u00ff]*z",
     r"(?s).a.", r"x{,2}\d+", r"[^a-z\d]*", r"😀|[^😀]{2}"],
)
def test_byte_dfa_matches_python_re_on_random_text(pattern):
    """Differential check of the UTF-8 byte DFA against Python's re on random strings."""
    rng = np.random.default_rng(0)
    alphabet = list("abcxz AZ19_-\n\té日😀") + ["\u00f0", "\u0100", "\uffff", "\U0010ffff"]
    c = C.regex(pattern)
    dfa = c.byte_dfa()
    hits = 0
    for _ in range(3000):
        text = "".join(rng.choice(alphabet, size=rng.integers(0, 6)))
        want = c.check(text)
        hits += want
        assert dfa.accepts(text.encode()) == want, (pattern, text)
    assert hits > 0
    for junk in (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80"):
        assert not dfa.accepts(junk) and not c.check_bytes(junk)
