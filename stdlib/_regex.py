"""Regex -> language expression (`ppl.stdlib._fa`), with Python ``re`` or ECMA-262 semantics.

Parsing is Python's own (``re._parser``), so the syntax accepted and the tree built are
exactly ``re``'s: comments ``(?#...)``, ``\\0`` and octal escapes, ``\\N{...}``, scoped flags,
verbose mode. Character classes get their exact code-point sets:

* Python dialect (``C.regex``): every class or literal under ``IGNORECASE``, and the
  shorthand categories ``\\d \\w \\s`` (Unicode unless ``(?a)``), are evaluated by ``re``
  itself over all code points once (cached), so a class such as ``[^\\S\\W]`` (a character
  that is a space and not a word character: none) means exactly what ``re`` means.
* ECMA-262 dialect (JSON Schema ``pattern``): ``\\d``/``\\w`` are ASCII, ``\\s`` is
  ECMA's Unicode WhiteSpace and LineTerminator set, ``.`` excludes the four line
  terminators; the pattern is *searched* for (matches anywhere) unless anchored.

Validation happens before parsing so that every error names the construct and its position
(anchors inside a Python pattern, ``\\b``, lookarounds, backreferences, possessive
quantifiers ...).
"""

from __future__ import annotations

import functools
import re
import re._constants as K
import re._parser as P

import numpy as np

from ppl.stdlib import _fa as F

__all__ = ["validate", "to_node", "ecma_search_node", "escape_literal"]

_SPECIAL = set(".^$*+?{}[]|()\\")


def escape_literal(text: str) -> str:
    """Escapes ``text`` as a Python regex literal."""
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


def validate(pattern: str) -> None:
    """Checks that ``pattern`` is valid Python and inside the regular subset we support.

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
    in_class = False
    class_first = -1
    while i < end:
        c = pattern[i]
        if c == "\\":
            d = pattern[i + 1] if i + 1 < n else ""
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
            i += 2
            continue
        if in_class:
            if c == "]" and i != class_first:
                in_class = False
            i += 1
            continue
        if c == "[":
            in_class = True
            i += 1
            if i < n and pattern[i] == "^":
                i += 1
            class_first = i
            continue
        if c == "(" and pattern.startswith("(?", i):
            rest = pattern[i + 2 : i + 4]
            if rest[:1] == "#":  # a comment: skip to its ')'
                i = pattern.index(")", i) + 1
                continue
            if rest[:1] in ("=", "!") or rest in ("<=", "<!"):
                raise _err(pattern, i, "lookaround assertions are not supported")
            if rest[:1] == "(":
                raise _err(pattern, i, "conditional groups are not supported")
            if rest[:1] == ">":
                raise _err(pattern, i, "atomic groups are not supported")
            if rest == "P=":
                raise _err(pattern, i, "backreferences are not regular and not supported")
        if c in "^$":
            raise _err(pattern, i, f"anchor {c!r} inside the pattern is not supported; the "
                       "pattern always matches the whole text (a leading '^' / trailing '$' "
                       "is accepted and ignored)")
        if c in "*+?}" and pattern[i + 1 : i + 2] == "+":
            raise _err(pattern, i + 1, "possessive quantifiers are not supported")
        i += 1


# ---- exact character sets ------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _all_chars() -> str:
    return np.arange(F.MAX_CP + 1, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")


@functools.lru_cache(maxsize=512)
def _by_re(cls_text: str, flags: int) -> F.CharSet:
    """The code points the one-character regex ``cls_text`` matches under ``flags`` (by
    running ``re`` over every code point: exact by construction)."""
    rx = re.compile(f"(?:{cls_text})+", flags)
    return F.CharSet((m.start(), m.end() - 1) for m in rx.finditer(_all_chars()))


_CAT_TEXT = {K.CATEGORY_DIGIT: r"\d", K.CATEGORY_NOT_DIGIT: r"\D", K.CATEGORY_SPACE: r"\s",
             K.CATEGORY_NOT_SPACE: r"\S", K.CATEGORY_WORD: r"\w", K.CATEGORY_NOT_WORD: r"\W"}

_ECMA_SPACE = F.CharSet.of("\t\n\v\f\r \xa0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff") | \
    F.CharSet.range(0x2000, 0x200A)
_ECMA_DIGIT = F.CharSet.range("0", "9")
_ECMA_WORD = F.CharSet.range("a", "z") | F.CharSet.range("A", "Z") | _ECMA_DIGIT | F.CharSet.of("_")
_ECMA_CAT = {K.CATEGORY_DIGIT: _ECMA_DIGIT, K.CATEGORY_NOT_DIGIT: _ECMA_DIGIT.complement(),
             K.CATEGORY_SPACE: _ECMA_SPACE, K.CATEGORY_NOT_SPACE: _ECMA_SPACE.complement(),
             K.CATEGORY_WORD: _ECMA_WORD, K.CATEGORY_NOT_WORD: _ECMA_WORD.complement()}
_ECMA_LINE_TERM = F.CharSet.of("\n\r\u2028\u2029")

_CLASS_FLAGS = re.IGNORECASE | re.ASCII | re.UNICODE


def _class_text(items) -> str:
    out = []
    for op, av in items:
        if op is K.NEGATE:
            out.insert(0, "^")
        elif op is K.LITERAL:
            out.append(f"\\U{av:08x}")
        elif op is K.RANGE:
            out.append(f"\\U{av[0]:08x}-\\U{av[1]:08x}")
        elif op is K.CATEGORY:
            out.append(_CAT_TEXT[av])
        else:
            raise ValueError(f"unsupported item {op} in a character class")
    return "[" + "".join(out) + "]"


def _cset(op, av, flags: int, dialect: str) -> F.CharSet:
    """The exact set of a one-character node."""
    ic = bool(flags & re.IGNORECASE) and dialect == "python"
    cflags = flags & _CLASS_FLAGS
    if cflags & re.ASCII:
        cflags &= ~re.UNICODE  # (?a) inside a str pattern whose default is Unicode
    if op is K.LITERAL:
        return _by_re(f"\\U{av:08x}", cflags) if ic else F.CharSet([(av, av)])
    if op is K.NOT_LITERAL:
        base = _by_re(f"\\U{av:08x}", cflags) if ic else F.CharSet([(av, av)])
        return base.complement()
    if op is K.ANY:
        if dialect == "ecma":
            return _ECMA_LINE_TERM.complement()
        return F.ALL_CHARS if flags & re.DOTALL else F.CharSet.of("\n").complement()
    if op is K.IN:
        if ic:
            return _by_re(_class_text(av), cflags)
        out = F.CharSet()
        negate = False
        for iop, iav in av:
            if iop is K.NEGATE:
                negate = True
            elif iop is K.LITERAL:
                out = out | F.CharSet([(iav, iav)])
            elif iop is K.RANGE:
                out = out | F.CharSet([iav])
            elif iop is K.CATEGORY:
                out = out | (_ECMA_CAT[iav] if dialect == "ecma"
                             else _by_re(_CAT_TEXT[iav], cflags))
            else:
                raise ValueError(f"unsupported item {iop} in a character class")
        return out.complement() if negate else out
    raise AssertionError(op)


# ---- tree -> language expression -----------------------------------------------------------


class _Unsupported(ValueError):
    pass


def _seq(items, flags: int, dialect: str) -> F.Node:
    return F.cat(*[_item(op, av, flags, dialect) for op, av in items])


def _item(op, av, flags: int, dialect: str) -> F.Node:
    if op in (K.LITERAL, K.NOT_LITERAL, K.ANY, K.IN):
        return F.cset(_cset(op, av, flags, dialect))
    if op is K.BRANCH:
        return F.alt(*[_seq(b, flags, dialect) for b in av[1]])
    if op is K.SUBPATTERN:
        _group, add, dele, sub = av
        return _seq(sub, (flags | add) & ~dele, dialect)
    if op in (K.MAX_REPEAT, K.MIN_REPEAT):
        lo, hi, sub = av
        return F.rep(_seq(sub, flags, dialect), lo, None if hi is K.MAXREPEAT else hi)
    if op is K.POSSESSIVE_REPEAT:
        raise _Unsupported("possessive quantifiers are not supported")
    if op is K.ATOMIC_GROUP:
        raise _Unsupported("atomic groups are not supported")
    if op is K.AT:
        raise _Unsupported(f"anchor {str(av).lower()} is only supported at the start/end")
    if op in (K.GROUPREF, K.GROUPREF_EXISTS):
        raise _Unsupported("backreferences are not regular and not supported")
    if op in (K.ASSERT, K.ASSERT_NOT):
        raise _Unsupported("lookaround assertions are not supported")
    raise _Unsupported(f"unsupported regex construct {op}")


_STARTS = (K.AT_BEGINNING, K.AT_BEGINNING_STRING)
_ENDS = (K.AT_END, K.AT_END_STRING)


def to_node(pattern: str) -> F.Node:
    """Full-match language of a Python ``pattern`` (validate it first)."""
    tree = P.parse(pattern, 0)
    flags = tree.state.flags
    items = list(tree)
    # Under full-match semantics a leading '^'/'\\A' and a trailing '$'/'\\Z' change nothing.
    while items and items[0][0] is K.AT and items[0][1] in _STARTS:
        items.pop(0)
    while items and items[-1][0] is K.AT and items[-1][1] in _ENDS:
        items.pop()
    try:
        return _seq(items, flags, "python")
    except _Unsupported as e:
        raise ValueError(f"invalid regex {pattern!r}: {e}") from None


def ecma_search_node(pattern: str) -> F.Node:
    """Language of strings in which an ECMA-262 ``pattern`` finds a match (JSON Schema
    ``pattern``: not anchored unless it says ``^``/``$``).

    Raises:
        ValueError: syntax Python's parser rejects, or a construct that is not regular.
    """
    if not isinstance(pattern, str):
        raise ValueError(f"'pattern' must be a string, got {pattern!r}")
    src = pattern.replace("(?<", "(?P<").replace("(?P<=", "(?<=").replace("(?P<!", "(?<!")
    try:
        tree = P.parse(src, 0)
    except re.error as e:
        raise _err(pattern, e.pos or 0, e.msg) from None
    items = list(tree)
    branches = [items]
    if len(items) == 1 and items[0][0] is K.BRANCH:
        branches = [list(b) for b in items[0][1][1]]
    anything = F.star(F.ANY)
    out = []
    try:
        for b in branches:
            head = bool(b) and b[0][0] is K.AT and b[0][1] in _STARTS
            tail = bool(b) and b[-1][0] is K.AT and b[-1][1] in _ENDS
            core = b[1 if head else 0 : len(b) - 1 if tail else len(b)]
            node = _seq(core, 0, "ecma")
            out.append(F.cat(F.EPS if head else anything, node, F.EPS if tail else anything))
    except _Unsupported as e:
        raise ValueError(f"pattern {pattern!r}: {e}") from None
    return F.alt(*out)
