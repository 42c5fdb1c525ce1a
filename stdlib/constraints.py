"""Hard constraints compiled to token-level automata.

Every text constraint here is a byte-level DFA, lifted to a token automaton over a model's
vocabulary by one shared function (`ppl.stdlib._automata.lift`) and pruned to its
co-accessible part by another (`ppl.stdlib._automata.to_automaton`). Because the automata
read the *bytes* of tokens, a token that spans a word boundary, starts with a space or ends in
the middle of a UTF-8 character is handled exactly.

Quick reference (details and examples in docs/constraints.md):

| constraint | meaning |
|---|---|
| [regex(p)][ppl.stdlib.constraints.regex] | the whole text matches `p` (Python syntax, regular subset) |
| [json_schema(s)][ppl.stdlib.constraints.json_schema] | the text is the canonical serialisation of a document valid under `s` (a documented subset of JSON Schema) |
| [max_word_length(n)][ppl.stdlib.constraints.max_word_length] | every word has at most `n` characters |
| [allowed_words(ws)][ppl.stdlib.constraints.allowed_words] | every word is one of `ws` |
| [banned_words(ws)][ppl.stdlib.constraints.banned_words] | no word is one of `ws` |
| [must_contain(ws)][ppl.stdlib.constraints.must_contain] | every word of `ws` occurs (as a whole word) |
| [stop(ss)][ppl.stdlib.constraints.stop] | the text ends right after the first occurrence of a stop string (or never contains one) |
| [max_tokens(n)][ppl.stdlib.constraints.max_tokens] | at most `n` text tokens |
| [max_chars(n)][ppl.stdlib.constraints.max_chars] | at most `n` characters (Unicode code points) |
| [max_words(n)][ppl.stdlib.constraints.max_words] | at most `n` words |
| [all_of(c1, c2, ...)][ppl.stdlib.constraints.all_of] | all constraints hold (product automaton) |
| [canonical_tokens(lm)][ppl.stdlib.constraints.canonical_tokens] | every adjacent token pair is one the model's BPE tokenizer produces (a rule on tokens) |

A *word* is a maximal run of word characters; word characters default to the ASCII letters
``[A-Za-z]`` and can be changed with ``word_chars=`` (ASCII only).
"""

from __future__ import annotations

import json
import re
import string
from typing import Any, Iterable, Sequence

import numpy as np

from ppl.models.base import Vocab
from ppl.stdlib import _automata as A
from ppl.stdlib import _fa
from ppl.stdlib import _jsonschema as _js
from ppl.stdlib._canonical import CanonicalTokens
from ppl.stdlib._regex import to_node, validate
from ppl.stdlib.base import Constraint, TextPredicate, TokenAutomaton

__all__ = [
    "canonical_tokens",
    "lark",
    "predicate",
    "Predicate",
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
    "Regex",
    "JsonSchema",
    "MaxWordLength",
    "AllowedWords",
    "BannedWords",
    "MustContain",
    "Stop",
    "MaxTokens",
    "MaxChars",
    "MaxWords",
    "AllOf",
    "CanonicalTokens",
    "ByteConstraint",
    "DEFAULT_WORD_CHARS",
    "MUST_CONTAIN_MAX_WORDS",
]

DEFAULT_WORD_CHARS = string.ascii_letters
#: ``must_contain`` tracks which words were seen as a bit mask: 2**k states per trie node.
MUST_CONTAIN_MAX_WORDS = 8


class ByteConstraint(Constraint):
    """A constraint defined by a byte DFA; compiles through the shared lifter and pruner.

    Subclasses implement `_build_byte_dfa` and `check_bytes` (an independent
    reference implementation, used by the tests to validate the automaton).
    """

    def byte_dfa(self) -> A.ByteDFA:
        """The (vocabulary-independent) byte DFA, built once per constraint."""
        dfa = self.__dict__.get("_byte_dfa_cache")
        if dfa is None:
            dfa = self._build_byte_dfa()
            self.__dict__["_byte_dfa_cache"] = dfa
        return dfa

    def _build_byte_dfa(self) -> A.ByteDFA:
        raise NotImplementedError

    def accepts(self, text: str) -> bool:
        """Whether the automaton this constraint compiles to accepts ``text`` (no model needed;
        this is what inference enforces, token boundaries aside)."""
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates are not text
            return False
        return self.byte_dfa().accepts(data)

    def _compile(self, vocab: Vocab) -> TokenAutomaton:
        table, acc, start, columns = A.lift(self.byte_dfa(), vocab, self.name)
        return A.to_automaton(table, acc, start, vocab, self.name, columns)

    def __repr__(self) -> str:
        return self.name


# ---- regex / JSON schema ------------------------------------------------------------------


class Regex(ByteConstraint):
    """The whole generated text matches ``pattern`` (full-match semantics, as ``re.fullmatch``).

    Args:
        pattern: a Python regular expression restricted to its regular subset, with Python
            ``re``'s own semantics: literals, classes (``\\d \\w \\s`` are Unicode as in
            ``re``, ASCII under ``(?a)``), ``.``, groups, alternation, ``* + ? {m,n}`` (lazy
            variants behave like greedy ones under full match), inline and scoped flags
            ``i s a u x m``, comments ``(?#...)``, ``\\0``/octal, ``\\xNN``, ``\\uXXXX``,
            ``\\N{NAME}``. A leading ``^``/``\\A`` and a trailing ``$`` are accepted and ignored.
        max_states: refuse (``ValueError`` naming the bound) when the character automaton
            needs more states; checked while it is built, so it fails fast.

    Raises:
        ValueError: invalid or unsupported syntax, with the position in the pattern, or an
            automaton over ``max_states``.
    """

    def __init__(self, pattern: str, max_states: int = _fa.DEFAULT_MAX_STATES):
        validate(pattern)
        self.pattern = pattern
        self.name = f"regex({pattern!r})"
        self.max_states = int(max_states)
        self._dfa = _fa.compile_dfa(to_node(pattern), self.max_states, self.name)
        self._re = re.compile(pattern)

    def _build_byte_dfa(self) -> A.ByteDFA:
        return _fa.to_byte_dfa(self._dfa)

    def accepts(self, text: str) -> bool:
        # The character automaton: the byte automaton is its exact UTF-8 expansion (tested
        # against it), and reading characters needs no expansion.
        return self._dfa.accepts(text)

    def check_bytes(self, data: bytes) -> bool:
        # Reference: Python's re on the decoded text; bytes that are not valid UTF-8 never match.
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return self._re.fullmatch(text) is not None


def regex(pattern: str, max_states: int = _fa.DEFAULT_MAX_STATES) -> Regex:
    """The whole text matches ``pattern``; see `Regex`."""
    return Regex(pattern, max_states)


class JsonSchema(ByteConstraint):
    """The text is a JSON document valid under ``schema`` (JSON Schema draft 2020-12).

    By default the text is the *canonical* serialisation: ``json.dumps(doc,
    ensure_ascii=False)`` with the given separators, object members in schema order
    (declared ``properties`` as listed, then those of in-place parts such as ``allOf``
    and ``$ref``, then other members), numbers without exponent.
    With ``whitespace=True`` any JSON whitespace is accepted between tokens. The supported
    keywords, and the few sound approximations, are listed in docs/constraints.md;
    an unsupported keyword raises naming it.

    Args:
        schema: a dict, a JSON string, or a Pydantic model class.
        separators: ``(item_sep, key_sep)`` as for ``json.dumps``, spaces around ``,``/``:`` only.
        max_depth: free-form JSON values (``true`` schemas, schemas without ``type``, extra
            members) and recursive ``$ref`` are expanded to this many nested arrays/objects.
        max_states: refuse when an automaton needs more states (checked while building).
        whitespace: accept any JSON whitespace around structural tokens.
        any_order: accept object members in any order (at most 12 required properties per
            object; a declared member is not prevented from repeating). With ``whitespace=True`` this accepts
            what a validator accepts, up to the approximations listed in docs/constraints.md.

    Raises:
        ValueError: naming the first unsupported keyword and its location, or the state bound.
    """

    def __init__(self, schema: Any, separators: Sequence[str] = (", ", ": "),
                 max_depth: int = _js.DEFAULT_DEPTH, max_states: int = _fa.DEFAULT_MAX_STATES,
                 whitespace: bool = False, any_order: bool = False):
        schema = _schema_of(schema)
        self.schema = schema
        self.separators = tuple(separators)
        self.whitespace = bool(whitespace)
        self.name = f"json_schema({json.dumps(schema)[:60]})"
        self.any_order = bool(any_order)
        self._dfa = _js.compile_schema(schema, self.separators, max_depth, max_states,
                                       self.whitespace, self.any_order)

    def _build_byte_dfa(self) -> A.ByteDFA:
        return _fa.to_byte_dfa(self._dfa)

    def accepts(self, text: str) -> bool:
        # The character automaton: the byte automaton is its exact UTF-8 expansion (tested
        # against it), and reading characters needs no expansion.
        return self._dfa.accepts(text)

    def check_bytes(self, data: bytes) -> bool:
        try:
            text = data.decode("utf-8")
            json.loads(text)
        except ValueError:
            return False
        return self._dfa.accepts(text)

    def canonical(self, doc: Any) -> str:
        """``doc`` serialised in the form this constraint accepts (members in schema order)."""
        return _js.canonical_text(_js.reorder(doc, self.schema), self.separators)


def _schema_of(schema: Any) -> Any:
    if isinstance(schema, str):
        try:
            return json.loads(schema)
        except json.JSONDecodeError as e:
            raise ValueError(f"json_schema: the schema is not valid JSON: {e}") from None
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return schema.model_json_schema()  # a Pydantic v2 model class
    return schema


def json_schema(schema: Any, separators: Sequence[str] = (", ", ": "),
                max_depth: int = _js.DEFAULT_DEPTH, max_states: int = _fa.DEFAULT_MAX_STATES,
                whitespace: bool = False, any_order: bool = False) -> JsonSchema:
    """JSON valid under ``schema``; see `JsonSchema`."""
    return JsonSchema(schema, separators, max_depth, max_states, whitespace, any_order)


# ---- word rules ---------------------------------------------------------------------------


def _word_bytes(word_chars: str) -> bytes:
    if not isinstance(word_chars, str) or not word_chars:
        raise ValueError("word_chars must be a non-empty string of ASCII characters")
    try:
        b = word_chars.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"word_chars must be ASCII, got {word_chars!r}") from None
    return bytes(sorted(set(b)))


def _word_classes(wb: bytes, individual: bool) -> np.ndarray:
    """Byte classes: 0 = non-word; word bytes share class 1 or get one class each."""
    cls = np.zeros(256, np.int64)
    for k, b in enumerate(wb):
        cls[b] = k + 1 if individual else 1
    return cls


def _words_re(wb: bytes) -> re.Pattern:
    return re.compile(b"[" + b"".join(re.escape(bytes([c])) for c in wb) + b"]+")


class _WordRule(ByteConstraint):
    def __init__(self, word_chars: str):
        self.word_chars = word_chars
        self._wb = _word_bytes(word_chars)
        self._is_word = np.zeros(256, bool)
        self._is_word[list(self._wb)] = True
        self._re_words = _words_re(self._wb)

    def _words_of(self, data: bytes) -> list[bytes]:
        return self._re_words.findall(data)


class MaxWordLength(_WordRule):
    """Every word (maximal run of word characters) has at most ``n`` characters."""

    def __init__(self, n: int, word_chars: str = DEFAULT_WORD_CHARS):
        super().__init__(word_chars)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"max_word_length: n must be a non-negative int, got {n!r}")
        self.n = n
        self.name = f"max_word_length({n})"

    def _build_byte_dfa(self):
        n, isw = self.n, self._is_word
        return A.dfa_from_step(
            0, lambda k, b: (k + 1 if k < n else None) if isw[b] else 0, lambda k: True,
            _word_classes(self._wb, False), what=self.name)

    def check_bytes(self, data: bytes) -> bool:
        return all(len(w) <= self.n for w in self._words_of(data))


def max_word_length(n: int, word_chars: str = DEFAULT_WORD_CHARS) -> MaxWordLength:
    """Every maximal run of word characters (default ``[A-Za-z]``) has length ``<= n``."""
    return MaxWordLength(n, word_chars)


class _Trie:
    """A trie over (optionally case-folded) word bytes; node 0 is the root."""

    def __init__(self, words: list[bytes]):
        self.children: list[dict[int, int]] = [{}]
        self.word_at: dict[int, int] = {}
        for k, w in enumerate(words):
            node = 0
            for b in w:
                nxt = self.children[node].get(b)
                if nxt is None:
                    nxt = len(self.children)
                    self.children.append({})
                    self.children[node][b] = nxt
                node = nxt
            self.word_at.setdefault(node, k)


class _WordListRule(_WordRule):
    """Shared validation and trie for rules over a list of words.

    States used by subclasses: ``("out",)`` outside a word, ``("in", node)`` inside a word
    whose bytes so far spell a trie prefix, ``("other",)`` inside a word that is no listed
    word's prefix.
    """

    kind = "words"

    def __init__(self, words: Iterable[str], word_chars: str, ignore_case: bool):
        super().__init__(word_chars)
        if isinstance(words, (str, bytes)):
            raise ValueError(f"{self.kind}: give a list of words, not a single string {words!r}")
        words = list(words)
        self.ignore_case = bool(ignore_case)
        enc = []
        for w in words:
            if not isinstance(w, str) or not w:
                raise ValueError(f"{self.kind}: words must be non-empty strings, got {w!r}")
            b = w.encode("utf-8")
            bad = [chr(c) for c in b if not self._is_word[c]]
            if bad:
                raise ValueError(
                    f"{self.kind}: {w!r} contains {bad[0]!r}, which is not a word character "
                    f"(word_chars={word_chars!r}); a word is a maximal run of word characters"
                )
            enc.append(self._fold(b))
        self.words = words
        self._enc = list(dict.fromkeys(enc))  # dedupe, keep order
        self._set = set(self._enc)
        self._trie = _Trie(self._enc)

    def _fold(self, b: bytes) -> bytes:
        return b.lower() if self.ignore_case else b

    def _fold_byte(self, b: int) -> int:
        return b + 32 if self.ignore_case and 65 <= b <= 90 else b

    def _classes(self) -> np.ndarray:
        return _word_classes(self._wb, True)

    def _advance_word(self, st, b):
        """Word-tracking part of a state after byte ``b``: returns (new_state, ended_word_idx).

        ``ended_word_idx`` is the index of the listed word that just ended (a non-word byte
        after it), -1 when the ended word is not listed, None when no word ended.
        """
        if self._is_word[b]:
            fb = self._fold_byte(b)
            if st[0] == "in":
                nxt = self._trie.children[st[1]].get(fb)
            elif st[0] == "out":
                nxt = self._trie.children[0].get(fb)
            else:
                nxt = None
            return (("in", nxt) if nxt is not None else ("other",)), None
        return ("out",), self._ended(st)

    def _ended(self, st):
        if st[0] == "in":
            return self._trie.word_at.get(st[1], -1)
        if st[0] == "other":
            return -1
        return None


class AllowedWords(_WordListRule):
    """Every word of the text is one of ``words``."""

    kind = "allowed_words"

    def __init__(self, words, word_chars=DEFAULT_WORD_CHARS, ignore_case=False):
        super().__init__(words, word_chars, ignore_case)
        self.name = f"allowed_words({len(self._enc)} words)"

    def _build_byte_dfa(self):
        def step(st, b):
            nst, ended = self._advance_word(st, b)
            if nst == ("other",) or ended == -1:
                return None  # a prefix of no allowed word, or a finished unlisted word
            return nst

        return A.dfa_from_step(("out",), step, lambda st: self._ended(st) != -1,
                               self._classes(), what=self.name)

    def check_bytes(self, data: bytes) -> bool:
        return all(self._fold(w) in self._set for w in self._words_of(data))


def allowed_words(words: Iterable[str], word_chars: str = DEFAULT_WORD_CHARS,
                  ignore_case: bool = False) -> AllowedWords:
    """Every word (maximal run of ``word_chars``) is in ``words``; see `AllowedWords`."""
    return AllowedWords(words, word_chars, ignore_case)


class BannedWords(_WordListRule):
    """No word of the text is one of ``words`` (substrings of longer words are fine)."""

    kind = "banned_words"

    def __init__(self, words, word_chars=DEFAULT_WORD_CHARS, ignore_case=False):
        super().__init__(words, word_chars, ignore_case)
        self.name = f"banned_words({len(self._enc)} words)"

    def _build_byte_dfa(self):
        def step(st, b):
            nst, ended = self._advance_word(st, b)
            if ended is not None and ended >= 0:
                return None
            return nst

        def accept(st):
            e = self._ended(st)
            return e is None or e < 0

        return A.dfa_from_step(("out",), step, accept, self._classes(), what=self.name)

    def check_bytes(self, data: bytes) -> bool:
        return not any(self._fold(w) in self._set for w in self._words_of(data))


def banned_words(words: Iterable[str], word_chars: str = DEFAULT_WORD_CHARS,
                 ignore_case: bool = False) -> BannedWords:
    """No whole word is in ``words``; see `BannedWords`."""
    return BannedWords(words, word_chars, ignore_case)


class MustContain(_WordListRule):
    """Each of ``words`` occurs at least once as a whole word (at most 8 words)."""

    kind = "must_contain"

    def __init__(self, words, word_chars=DEFAULT_WORD_CHARS, ignore_case=False):
        super().__init__(words, word_chars, ignore_case)
        if len(self._enc) > MUST_CONTAIN_MAX_WORDS:
            raise ValueError(
                f"must_contain: {len(self._enc)} distinct words exceed the limit of "
                f"{MUST_CONTAIN_MAX_WORDS} (the automaton tracks a subset of found words, "
                f"2**k states); split into several must_contain constraints run side by side"
            )
        self.name = f"must_contain({', '.join(self.words)})"

    def _build_byte_dfa(self):
        full = (1 << len(self._enc)) - 1

        def step(st, b):
            word, mask = st
            nst, ended = self._advance_word(word, b)
            if ended is not None and ended >= 0:
                mask |= 1 << ended
            return (nst, mask)

        def accept(st):
            word, mask = st
            e = self._ended(word)
            if e is not None and e >= 0:
                mask |= 1 << e
            return mask == full

        return A.dfa_from_step((("out",), 0), step, accept, self._classes(), what=self.name)

    def check_bytes(self, data: bytes) -> bool:
        found = {self._fold(w) for w in self._words_of(data)}
        return self._set <= found


def must_contain(words: Iterable[str], word_chars: str = DEFAULT_WORD_CHARS,
                 ignore_case: bool = False) -> MustContain:
    """Every word in ``words`` appears as a whole word; see `MustContain`."""
    return MustContain(words, word_chars, ignore_case)


class MaxWords(_WordRule):
    """At most ``n`` words (maximal runs of word characters)."""

    def __init__(self, n: int, word_chars: str = DEFAULT_WORD_CHARS):
        super().__init__(word_chars)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"max_words: n must be a non-negative int, got {n!r}")
        self.n = n
        self.name = f"max_words({n})"

    def _build_byte_dfa(self):
        n, isw = self.n, self._is_word

        def step(st, b):
            count, inside = st
            if not isw[b]:
                return (count, False)
            if inside:
                return st
            return (count + 1, True) if count < n else None

        return A.dfa_from_step((0, False), step, lambda st: True,
                               _word_classes(self._wb, False), what=self.name)

    def check_bytes(self, data: bytes) -> bool:
        return len(self._words_of(data)) <= self.n


def max_words(n: int, word_chars: str = DEFAULT_WORD_CHARS) -> MaxWords:
    """At most ``n`` words; see `MaxWords`."""
    return MaxWords(n, word_chars)


# ---- stop strings and lengths -------------------------------------------------------------


class Stop(ByteConstraint):
    """The text ends right after the first occurrence of a stop string, as ``generate``'s
    stop strings do.

    Accepted texts: texts that contain no stop string (they end with EOS, or at the token
    budget; with ``require=True`` they are rejected), and texts whose *first* stop-string
    occurrence ends exactly at the end of the text. When the token that completes a stop
    string is drawn, the text is finished: no EOS is drawn afterwards, so the target weighs
    such a text by the LM's probability of producing it (as a prefix), not by that times
    ``p(EOS | text)``. The compiled automaton has ``halts=True``; ``steer`` keeps it beside
    the other constraints' product and finishes a particle as soon as it is in a final
    state. A token that would run past a stop string (e.g. ``".\\n\\nThe"`` with stop
    ``"\\n\\n"``) is not allowed, because the text would not end at the stop string.
    """

    def __init__(self, strings: Iterable[str], require: bool = False):
        if isinstance(strings, (str, bytes)):
            strings = [strings]
        enc = []
        for s in strings:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop: stop strings must be non-empty strings, got {s!r}")
            enc.append(s.encode("utf-8"))
        if not enc:
            raise ValueError("stop: give at least one stop string")
        self.strings = list(strings)
        self.require = bool(require)
        self._enc = list(dict.fromkeys(enc))
        self.name = f"stop({self.strings!r})"

    def _build_byte_dfa(self):
        enc = self._enc
        prefixes = {s[:k] for s in enc for k in range(len(s) + 1)}
        used = sorted({b for s in enc for b in s})
        cls = np.zeros(256, np.int64)
        for k, b in enumerate(used):
            cls[b] = k + 1

        def step(st, b):
            if st == "STOP":
                return None
            x = st + bytes([b])
            if any(x.endswith(s) for s in enc):
                return "STOP"
            while x not in prefixes:  # longest suffix that can still grow into a stop string
                x = x[1:]
            return x

        return A.dfa_from_step(b"", step, lambda st: st == "STOP" or not self.require, cls,
                               what=self.name)

    def _compile(self, vocab: Vocab) -> TokenAutomaton:
        aut = super()._compile(vocab)
        object.__setattr__(aut, "halts", True)
        return aut

    def check_bytes(self, data: bytes) -> bool:
        ends = [data.find(s) + len(s) for s in self._enc if s in data]
        if not ends:
            return not self.require
        return min(ends) == len(data)


def stop(strings: Iterable[str] | str, require: bool = False) -> Stop:
    """Text ends right after the first stop string (or has none); see `Stop`."""
    return Stop(strings, require)


class MaxChars(ByteConstraint):
    """At most ``n`` characters (Unicode code points, counted as non-continuation bytes)."""

    def __init__(self, n: int):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"max_chars: n must be a non-negative int, got {n!r}")
        self.n = n
        self.name = f"max_chars({n})"

    def _build_byte_dfa(self):
        n = self.n
        cls = np.zeros(256, np.int64)
        cls[0x80:0xC0] = 1  # UTF-8 continuation bytes do not start a character

        def step(k, b):
            if 0x80 <= b < 0xC0:
                return k
            return k + 1 if k < n else None

        return A.dfa_from_step(0, step, lambda k: True, cls, what=self.name)

    def check_bytes(self, data: bytes) -> bool:
        return sum(1 for b in data if not 0x80 <= b < 0xC0) <= self.n


def max_chars(n: int) -> MaxChars:
    """At most ``n`` characters; see `MaxChars`."""
    return MaxChars(n)


class MaxTokens(Constraint):
    """At most ``n`` text tokens (EOS not counted). A counter automaton over tokens."""

    def __init__(self, n: int):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"max_tokens: n must be a non-negative int, got {n!r}")
        self.n = n
        self.name = f"max_tokens({n})"

    def _compile(self, vocab: Vocab) -> TokenAutomaton:
        n = self.n
        # Column-compressed: every text token behaves alike (column 0), specials go to the
        # all-dead column 1; to_automaton expands to [S, V].
        table = np.zeros((n + 2, 2), np.int32)
        table[1 : n + 1, 0] = np.arange(2, n + 2)  # state s means s-1 tokens so far
        columns = np.where(vocab.text_mask(), 0, 1)
        acc = np.ones(n + 2, bool)
        acc[0] = False
        return A.to_automaton(table, acc, 1, vocab, self.name, columns)

    def check(self, text: str) -> bool:
        raise TypeError("max_tokens counts tokens, not characters; use check_ids(ids, vocab)")

    def check_bytes(self, data: bytes) -> bool:
        return self.check(data.decode("utf-8", "replace"))

    def check_ids(self, ids, vocab: Vocab) -> bool:
        text = vocab.text_mask()
        ids = [int(i) for i in ids]
        return all(0 <= i < vocab.size and text[i] for i in ids) and len(ids) <= self.n

    def __repr__(self) -> str:
        return self.name


def max_tokens(n: int) -> MaxTokens:
    """At most ``n`` text tokens; see `MaxTokens`."""
    return MaxTokens(n)


# ---- conjunction --------------------------------------------------------------------------


class AllOf(Constraint):
    """Conjunction: the product automaton of the parts, explored and pruned on the host.

    Args:
        *constraints: two or more constraints (nested ``AllOf`` are flattened).
        max_states: raise ``ValueError`` when the (pruned) product exceeds this many states.
    """

    def __init__(self, *constraints: Constraint, max_states: int = 20_000):
        parts: list[Constraint] = []
        for c in constraints:
            if isinstance(c, AllOf):
                parts.extend(c.parts)
            elif isinstance(c, Constraint):
                parts.append(c)
            else:
                raise TypeError(f"all_of: expected Constraint objects, got {type(c).__name__}")
        if not parts:
            raise ValueError("all_of: give at least one constraint")
        self.parts = parts
        self.max_states = int(max_states)
        self.name = "all_of(" + ", ".join(p.name for p in parts) + ")"

    def _compile(self, vocab: Vocab) -> TokenAutomaton:
        auts = [p.compile(vocab) for p in self.parts]
        for p, a in zip(self.parts, auts):
            if not isinstance(a, TokenAutomaton):
                raise ValueError(f"all_of: {p.name} has no state table to join a product "
                                 "automaton; pass it to steer(constraints=[...]) beside the "
                                 "others (steer masks it separately).")
        table, acc, start, columns = A.product(auts, vocab, self.name, self.max_states)
        return A.to_automaton(table, acc, start, vocab, self.name, columns)

    def check_bytes(self, data: bytes) -> bool:
        return all(p.check_bytes(data) for p in self.parts)

    def check(self, text: str) -> bool:
        return all(p.check(text) for p in self.parts)

    def accepts(self, text: str) -> bool:
        return all(p.accepts(text) for p in self.parts)

    def check_ids(self, ids, vocab: Vocab) -> bool:
        return all(p.check_ids(ids, vocab) for p in self.parts)

    def __repr__(self) -> str:
        return self.name


def all_of(*constraints: Constraint, max_states: int = 20_000) -> AllOf:
    """All constraints hold; see `AllOf`."""
    return AllOf(*constraints, max_states=max_states)


def canonical_tokens(tokenizer) -> CanonicalTokens:
    """Only token sequences whose adjacent pairs the model's BPE tokenizer would produce
    (``encode(bytes(a) + bytes(b)) == [a, b]``); see `CanonicalTokens`.

    Args:
        tokenizer: the model from ``ppl.models.load`` (or its tokenizer).
    """
    return CanonicalTokens(tokenizer)


def lark(grammar: str, start: str = "start", max_draws: int = 64):
    """A Lark grammar (LALR(1)): the final text is a sentence of the grammar; exact.

    Enforced on the host with an incremental parser and unbiased weighted rejection (see
    `ppl.stdlib._lark`); invalid grammars raise ``ValueError`` at construction. Budget-aware:
    a token is also refused when the text after it cannot become a sentence in the tokens
    left (a lower bound on the tokens to the nearest sentence, from the parser state), so
    grammars with unbounded terminals finish within ``max_tokens``; only texts of zero target
    mass are removed, so the target stays exact (docs/constraints.md).
    """
    from ppl.stdlib._lark import LarkConstraint

    return LarkConstraint(grammar, start=start, max_draws=max_draws)


#: The historical name of [TextPredicate][ppl.stdlib.base.TextPredicate].
Predicate = TextPredicate


def predicate(fn, incremental: bool = False, name: str | None = None) -> TextPredicate:
    """A host rule ``fn(text) -> bool``; see [TextPredicate][ppl.stdlib.base.TextPredicate]."""
    return TextPredicate(fn, incremental, name)
