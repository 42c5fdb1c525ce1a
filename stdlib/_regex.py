"""Regex -> character FSM (interegular) -> byte DFA (UTF-8 expanded).

Validation happens in three passes so that every error names the problem and its position:

1. Python's ``re`` parser (syntax errors carry ``pos``);
2. a scanner for constructs that are valid Python but not regular or not supported by
   interegular (anchors inside the pattern, ``\\b``, lookarounds, backreferences, ...); it also
   rewrites ``\\uXXXX``/``\\UXXXXXXXX``/``\\N{...}`` into literal characters (interegular lacks
   them) and strips a leading ``^`` / trailing ``$`` (no-ops under full-match semantics);
3. interegular's own parser/compiler, whose errors are wrapped.
"""

from __future__ import annotations

import bisect
import re
import unicodedata

import interegular
import numpy as np
from interegular.fsm import anything_else

from ppl.stdlib._automata import ByteDFA

__all__ = ["preprocess", "compile_fsm", "fsm_to_byte_dfa", "escape_literal"]

_REDUCE_MAX_STATES = 600
_SPECIAL = set(".^$*+?{}[]|()\\")
_FLAG_OK = set("is")  # inline flags interegular implements (case-insensitive, dotall)


def escape_literal(text: str) -> str:
    """Escapes ``text`` as a regex literal understood by both ``re`` and interegular."""
    out = []
    for ch in text:
        if ch in _SPECIAL:
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def _err(pattern: str, pos: int, msg: str) -> ValueError:
    caret = " " * pos + "^"
    return ValueError(f"invalid regex at position {pos}: {msg}\n  {pattern}\n  {caret}")


def _literal_for(ch: str, in_class: bool) -> str:
    if in_class and ch in "]\\-^":
        return "\\" + ch
    if not in_class and ch in _SPECIAL:
        return "\\" + ch
    if ord(ch) < 0x100 and (ord(ch) < 0x20 or ord(ch) == 0x7F):
        return f"\\x{ord(ch):02x}"
    return ch


def preprocess(pattern: str) -> str:
    """Validates ``pattern`` and rewrites it for interegular (see module docstring).

    Raises:
        ValueError: naming the problem and its position in ``pattern``.
    """
    if not isinstance(pattern, str):
        raise TypeError(f"regex: pattern must be a str, got {type(pattern).__name__}")
    try:
        re.compile(pattern)
    except re.error as e:
        raise _err(pattern, e.pos if e.pos is not None else 0, e.msg) from None
    n = len(pattern)
    i = 1 if pattern.startswith("^") else 0
    end = n
    if n > i and pattern.endswith("$"):
        bs = len(pattern[:-1]) - len(pattern[:-1].rstrip("\\"))
        if bs % 2 == 0:
            end = n - 1
    out: list[str] = []
    in_class = False
    class_first = -1
    while i < end:
        c = pattern[i]
        if c == "\\":
            d = pattern[i + 1] if i + 1 < n else ""
            if d in ("u", "U"):
                width = 4 if d == "u" else 8
                ch = chr(int(pattern[i + 2 : i + 2 + width], 16))  # re validated the digits
                out.append(_literal_for(ch, in_class))
                i += 2 + width
                continue
            if d == "N":
                close = pattern.index("}", i)
                ch = unicodedata.lookup(pattern[i + 3 : close])
                out.append(_literal_for(ch, in_class))
                i = close + 1
                continue
            if not in_class:
                if d in "bB":
                    raise _err(pattern, i, f"\\{d} (word boundary) is not supported; "
                               "use max_word_length/allowed_words/banned_words for word rules")
                if d in "AZz":
                    raise _err(pattern, i, f"\\{d} (anchor) is not supported; the pattern "
                               "always matches the whole text")
                if d in "123456789":
                    if not re.match(r"[0-3][0-7]{2}", pattern[i + 1 : i + 4]):
                        raise _err(pattern, i, "backreferences are not regular and not supported")
            if d in "pP":
                raise _err(pattern, i, "unicode property classes \\p/\\P are not supported")
            out.append(pattern[i : i + 2])
            i += 2
            if in_class and i - 2 == class_first:
                class_first = -1
            continue
        if in_class:
            if c == "]" and i != class_first:
                in_class = False
                out.append(c)
            elif c == "]":
                out.append("\\]")  # a leading ']' is literal in re; interegular needs it escaped
            else:
                out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            class_first = i
            continue
        if c == "(" and pattern.startswith("(?", i):
            rest = pattern[i + 2 : i + 4]
            if rest[:1] in ("=", "!") or rest in ("<=", "<!"):
                raise _err(pattern, i, "lookaround assertions are not supported")
            if rest[:1] == "(":
                raise _err(pattern, i, "conditional groups are not supported")
            if rest[:1] == ">":
                raise _err(pattern, i, "atomic groups are not supported")
            if rest == "P=":
                raise _err(pattern, i, "backreferences are not regular and not supported")
            m = re.match(r"\(\?([a-zA-Z]+)(-[a-zA-Z]+)?[:)]", pattern[i:])
            if m:
                bad = set(m.group(1) + (m.group(2) or "")[1:]) - _FLAG_OK
                if bad:
                    raise _err(pattern, i, f"inline flag(s) {''.join(sorted(bad))!r} are not "
                               "supported (only 'i' and 's')")
        if c in "^$":
            raise _err(pattern, i, f"anchor {c!r} inside the pattern is not supported; the "
                       "pattern always matches the whole text (a leading '^' / trailing '$' "
                       "is accepted and ignored)")
        if c == "{" and not re.match(r"\{\d*(,\d*)?\}", pattern[i:]) or pattern.startswith("{}", i):
            out.append("\\{")  # re reads a '{' that opens no quantifier as a literal
            i += 1
            continue
        if c in "*+?}" and pattern[i + 1 : i + 2] == "+":
            raise _err(pattern, i + 1, "possessive quantifiers are not supported")
        out.append(c)
        i += 1
    return "".join(out)


def compile_fsm(original: str, pattern: str):
    """interegular FSM (reduced) of a preprocessed pattern, errors wrapped as ValueError."""
    try:
        fsm = interegular.parse_pattern(pattern).to_fsm()
    except Exception as e:  # interegular raises assorted types, some without positions
        pos = getattr(e, "index", None)
        where = f" near position {pos} of the rewritten pattern {pattern!r}" if pos is not None else ""
        raise ValueError(
            f"invalid or unsupported regex {original!r}: {type(e).__name__}: {e}{where}"
        ) from None
    if len(fsm.states) <= _REDUCE_MAX_STATES:
        # A minimal character DFA gives fewer token states. interegular's reduce() is
        # Brzozowski's (double reversal): ~0.5 s at 480 states but ~5 s at 1600, so large
        # machines (long counted repeats) are kept as built; they are correct, only bigger.
        fsm = fsm.reduce()
    return fsm


# ---- character FSM -> byte DFA ----------------------------------------------------------

_MAX_CP = 0x10FFFF
_SURR_LO, _SURR_HI = 0xD800, 0xDFFF


def fsm_to_byte_dfa(fsm) -> ByteDFA:
    """Expands a character FSM into a DFA over UTF-8 bytes.

    Each character state keeps its id; multi-byte characters go through intermediate states
    that are hash-consed, so "anything else" (every code point outside the FSM's explicit
    alphabet) costs three shared intermediate states per target instead of a trie over a
    million code points. Overlong encodings, surrogates and code points above U+10FFFF are
    rejected (dead), so every accepted byte string is valid UTF-8.
    """
    mapping = dict(fsm.alphabet._symbol_mapping)
    ae_key = mapping.pop(anything_else, None)
    explicit = sorted((ord(c), k) for c, k in mapping.items() if isinstance(c, str) and len(c) == 1)
    cps = [cp for cp, _ in explicit]
    keys = [k for _, k in explicit]
    char_states = sorted(fsm.states, key=lambda s: (s != fsm.initial, str(s)))
    sid = {s: i + 1 for i, s in enumerate(char_states)}
    rows: list[np.ndarray] = [np.zeros(256, np.int32)] + [None] * len(char_states)
    memo: dict = {}

    def new_state(cont: np.ndarray) -> int:
        row = np.zeros(256, np.int32)
        row[0x80:0xC0] = cont
        rows.append(row)
        return len(rows) - 1

    for q in char_states:
        m = fsm.map.get(q, {})

        def target(key, m=m):
            t = m.get(key) if key is not None else None
            return 0 if t is None else sid[t]

        default = target(ae_key)
        key_of = dict(zip(cps, keys))

        def lookup(cp, key_of=key_of, default=default, target=target):
            k = key_of.get(cp)
            return default if k is None else target(k)

        def uniform(k: int, t: int) -> int:
            if t == 0:
                return 0
            key = ("u", k, t)
            if key not in memo:
                child = t if k == 1 else uniform(k - 1, t)
                memo[key] = new_state(np.full(64, child, np.int32))
            return memo[key]

        def node(lo: int, k: int, minv: int, lookup=lookup, default=default, uniform=uniform) -> int:
            size = 64**k
            hi = lo + size - 1
            if hi < minv or lo > _MAX_CP or (lo >= _SURR_LO and hi <= _SURR_HI):
                return 0
            valid = lo >= minv and hi <= _MAX_CP and (hi < _SURR_LO or lo > _SURR_HI)
            a = bisect.bisect_left(cps, lo)
            has_explicit = a < len(cps) and cps[a] <= hi
            if valid and not has_explicit:
                return uniform(k, default)
            sub = size // 64
            children = []
            for c in range(64):
                slo = lo + c * sub
                if k == 1:
                    ok = slo >= minv and slo <= _MAX_CP and not (_SURR_LO <= slo <= _SURR_HI)
                    children.append(lookup(slo) if ok else 0)
                else:
                    children.append(node(slo, k - 1, minv))
            key = ("m", tuple(children))
            if key not in memo:
                memo[key] = new_state(np.asarray(children, np.int32))
            return memo[key]

        row = np.zeros(256, np.int32)
        for b in range(0x80):
            row[b] = lookup(b)
        for b in range(0xC2, 0xE0):
            row[b] = node((b & 0x1F) << 6, 1, 0x80)
        for b in range(0xE0, 0xF0):
            row[b] = node((b & 0x0F) << 12, 2, 0x800)
        for b in range(0xF0, 0xF5):
            row[b] = node((b & 0x07) << 18, 3, 0x10000)
        rows[sid[q]] = row
    trans = np.stack(rows).astype(np.int32)
    acc = np.zeros(len(rows), bool)
    for q in fsm.finals:
        acc[sid[q]] = True
    return ByteDFA(trans, acc, sid[fsm.initial])
