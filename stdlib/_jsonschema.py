"""JSON Schema (draft 2020-12) -> language expression over the canonical JSON text.

The language is a set of *texts*: a document is accepted in its canonical serialisation
(``json.dumps(doc, ensure_ascii=False, separators=seps)`` with object members in schema
order: declared ``properties`` first, in the order the schema lists them, followed by those
its in-place parts (``$ref``, ``allOf``, ``anyOf``, ``oneOf``, ``if``/``then``/``else``,
``dependentSchemas``) declare, then any other members), or, with ``whitespace=True``, with
any JSON whitespace between tokens.

How keywords compile (all exact unless listed under approximations):

* Every schema is split by JSON type into *slots* (null, boolean, number, string, array,
  object); a keyword narrows only its own slot, so a schema without ``type`` accepts every
  other type unconstrained, as the specification says.
* ``allOf`` / ``anyOf`` / ``oneOf`` / ``not`` / ``if``-``then``-``else`` are intersection,
  union and complement of automata, slot by slot; complements are taken within the
  *universe*: every canonical JSON value nested at most ``max_depth`` deep, numbers without
  exponent.
* Arrays and objects are sequences of elements/members driven by a small counting automaton
  (positions for ``prefixItems``, counts for ``minItems``/``maxItems``/``contains``/
  ``minContains``/``maxContains``/``minProperties``/``maxProperties``, the declared-member
  order and ``required``).
* ``$ref`` into the same document (``#``, ``#/$defs/...``, JSON pointers, ``$anchor``);
  recursion is unrolled until the nesting depth ``max_depth`` is used up. ``$dynamicRef``
  resolves as draft 2020-12 says: like ``$ref``, then, when the target carries the
  ``$dynamicAnchor`` the fragment names, to the outermost resource of the dynamic scope
  (the resources entered on the way) with that ``$dynamicAnchor``.
* ``dependentSchemas``: per member ``k``, ``sub ∪ (objects without k)`` (the latter exact).
* ``unevaluatedProperties`` / ``unevaluatedItems``: by evaluation cases (see
  `_Compiler.unevaluated`), exact.

Approximations are *sound*: each sub-schema is compiled either as a subset (positive
position) or a superset (under ``not``, in the condition of ``if``, in the other branches of
``oneOf``), so an accepted document is always valid. They are: ``uniqueItems: true`` (as a
subset: at most one item; as a superset: ignored), ``format`` (as a subset: enforced as
described in `FORMATS`; as a superset: ignored, which is the specification's default
annotation behaviour), recursion deeper than ``max_depth``.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import urllib.parse
from decimal import Decimal
from fractions import Fraction
from typing import Any

from ppl.stdlib import _fa as F
from ppl.stdlib._regex import ecma_search_node

__all__ = ["compile_schema", "ANNOTATIONS", "FORMATS", "DEFAULT_DEPTH", "canonical_text"]

#: Keywords that carry no constraint and are ignored.
ANNOTATIONS = frozenset(
    {"title", "description", "$schema", "$id", "$comment", "examples", "default",
     "deprecated", "readOnly", "writeOnly", "$vocabulary", "$anchor", "$dynamicAnchor",
     "contentMediaType", "contentEncoding", "contentSchema", "$defs", "definitions"}
)
#: Keywords of draft 2020-12 that are not implemented: refused with a message naming them.
UNSUPPORTED = frozenset({"$recursiveRef", "dependencies"})
#: most evaluation cases (combinations of anyOf/oneOf/if/dependentSchemas branches) an
#: ``unevaluatedProperties``/``unevaluatedItems`` may distinguish
MAX_EVAL_CASES = 64
DEFAULT_DEPTH = 3

_DIG = F.CharSet.range("0", "9")
_D19 = F.CharSet.range("1", "9")
_HEX = _DIG | F.CharSet.range("a", "f") | F.CharSet.range("A", "F")


def _s(cs: F.CharSet) -> F.Node:
    return F.cset(cs)


_DIGITS = F.plus(_s(_DIG))
_INT_TEXT = F.cat(F.opt(F.lit("-")), F.alt(F.lit("0"), F.cat(_s(_D19), F.star(_s(_DIG)))))
#: canonical numbers: no exponent (json.dumps writes 1e+100; those are outside the universe)
_NUMBER_TEXT = F.cat(_INT_TEXT, F.opt(F.cat(F.lit("."), _DIGITS)))
#: integers in the JSON Schema sense: a number with zero fractional part ("1.0")
_INTEGER_TEXT = F.cat(_INT_TEXT, F.opt(F.cat(F.lit("."), F.plus(F.lit("0")))))


def _ws_node(ws: bool) -> F.Node:
    return F.star(_s(F.CharSet.of(" \t\n\r"))) if ws else F.EPS


# ---- formats -----------------------------------------------------------------------------

def _rx(p: str) -> F.Node:
    from ppl.stdlib._regex import to_node
    return to_node(p)


_DATE = r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?(?:[zZ]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
# Label lengths are not bounded (a counted {0,61} costs ~60 states per label): as a
# subset of the specification's valid strings (format is an annotation there) any
# restriction is sound.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_H16 = r"[0-9A-Fa-f]{1,4}"
#: Formats enforced (as a subset of the valid strings: dates allow day 31 in every month
#: only as far as the regex says; see docs/constraints.md).
FORMATS = {
    "date": r"[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))",
    "time": r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?(?:[zZ]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])",
    "date-time": None,  # filled below
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "ipv4": rf"{_OCTET}(?:\.{_OCTET}){{3}}",
    "ipv6": rf"(?:{_H16}:){{7}}{_H16}",
    "hostname": rf"{_LABEL}(?:\.{_LABEL})*",
    "email": rf"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@{_LABEL}(?:\.{_LABEL})+",
    "uri": r"[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+",
    "duration": r"P(?:[0-9]+W|(?:[0-9]+Y)?(?:[0-9]+M)?(?:[0-9]+D)?(?:T(?:[0-9]+H)?(?:[0-9]+M)?(?:[0-9]+S)?)?)",
}
FORMATS["date-time"] = FORMATS["date"] + "[Tt]" + FORMATS["time"]


class SchemaError(ValueError):
    pass


def _fail(path: str, msg: str) -> SchemaError:
    return SchemaError(f"json_schema: {msg} (at {path or '#'})")


# ---- JSON strings ------------------------------------------------------------------------

_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_RAW = (F.CharSet.range(0x20, F.MAX_CP) - F.CharSet.of('"\\'))


def _escape_of(cp: int) -> str:
    ch = chr(cp)
    return _SHORT.get(ch) or f"\\u{cp:04x}"


_HEXV = {c: int(c, 16) for c in "0123456789abcdefABCDEF"}


def encode_string(value: F.CharDFA, quote: bool = True, escapes: bool = True) -> F.Node:
    """Texts ``"..."`` of the strings in ``value``, each character written raw (when JSON
    allows it) or escaped: ``\\"``, ``\\\\``, ``\\/``, ``\\b\\f\\n\\r\\t``, and, with
    ``escapes``, ``\\uXXXX`` for any character (a surrogate pair for those above U+FFFF),
    so ``json.dumps`` output with or without ``ensure_ascii`` is accepted and lengths count
    code points (``"\\ud83d\\udca9"`` is one character)."""
    bounds = [int(x) for x in value.bounds]
    n = value.num_states
    trans = value.trans
    extra: list[dict] = []  # intermediate states: {char: target}
    memo: dict = {}

    def new_state(row: dict) -> int:
        extra.append(row)
        return n + len(extra) - 1

    def atom(cp):
        return bisect.bisect_right(bounds, cp) - 1

    def key_of(s, lo, size):
        a, b = atom(lo), atom(lo + size - 1)
        return (tuple(int(x) for x in trans[s, a : b + 1]),
                tuple(bounds[j] - lo for j in range(a + 1, b + 1)))

    def hex_row(children: list) -> dict:
        row = {}
        for c, v in _HEXV.items():
            if children[v]:
                row[c] = children[v]
        return row

    def bmp(s, lo, k):
        """After reading some hex digits of a BMP escape: k digits remain."""
        size = 16 ** k
        if k == 0:
            if SURR_LO <= lo <= SURR_HI:
                return 0
            return int(trans[s, atom(lo)])
        if SURR_LO <= lo and lo + size - 1 <= SURR_HI:
            if lo >= 0xDC00 or k > 2:
                return 0  # a lone low surrogate is not a character
            return hi_sur(s, lo, k)
        key = ("b", k) + key_of(s, lo, size) + ((lo,) if lo <= SURR_HI and lo + size > SURR_LO else ())
        if key not in memo:
            kids = [bmp(s, lo + v * 16 ** (k - 1), k - 1) for v in range(16)]
            memo[key] = new_state(hex_row(kids)) if any(kids) else 0
        return memo[key]

    def hi_sur(s, lo, k):
        """Inside a high surrogate ``\\uD8xx``-``\\uDBxx``; k hex digits remain."""
        if k == 0:
            base = 0x10000 + ((lo - 0xD800) << 10)
            return low_part(s, base)
        size = 16 ** k
        base = 0x10000 + ((lo - 0xD800) << 10)
        key = ("h", k) + key_of(s, base, size * 1024)
        if key not in memo:
            kids = [hi_sur(s, lo + v * 16 ** (k - 1), k - 1) for v in range(16)]
            memo[key] = new_state(hex_row(kids)) if any(kids) else 0
        return memo[key]

    def low_part(s, base):
        key = ("l",) + key_of(s, base, 1024)
        if key not in memo:
            # \\ u [dD] [c-fC-F] h h : 0xDC00 + 10 bits
            def low(lo, k):
                if k == 0:
                    return int(trans[s, atom(base + lo - 0xDC00)])
                kk = ("lo", k, lo) + key_of(s, base + lo - 0xDC00, 16 ** k)
                if kk not in memo:
                    kids = [low(lo + v * 16 ** (k - 1), k - 1) for v in range(16)]
                    memo[kk] = new_state(hex_row(kids)) if any(kids) else 0
                return memo[kk]

            kids = [0] * 16
            for v in range(0xC, 0x10):
                kids[v] = low(0xD000 + v * 256, 2)
            third = new_state(hex_row(kids)) if any(kids) else 0
            if not third:
                memo[key] = 0
            else:
                d_state = new_state({"d": third, "D": third})
                u_state = new_state({"u": d_state})
                memo[key] = new_state({"\\": u_state})
        return memo[key]

    rows: list[dict] = [dict() for _ in range(n)]
    short = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
    for s in range(1, n):
        esc = {}
        for c, ch in short.items():
            t = int(trans[s, atom(ord(ch))])
            if t:
                esc[c] = t
        if escapes:
            u = bmp(s, 0, 4)
            if u:
                esc["u"] = u
        if esc:
            rows[s]["\\"] = new_state(esc)
    # assemble: raw transitions from the value table, the rest from the sparse rows
    pts = set(bounds) | {0x20, 0x22, 0x23, 0x5C, 0x5D}
    for row in rows + extra:
        for c in row:
            pts.add(ord(c))
            pts.add(ord(c) + 1)
    nb = np.asarray(sorted(pts), np.int64)
    total = n + len(extra)
    table = np.zeros((total, len(nb) - 1), np.int32)
    base_tab = value.refine(nb)
    lo = nb[:-1]
    raw = (lo >= 0x20) & (lo != 0x22) & (lo != 0x5C)
    table[:n] = np.where(raw[None, :], base_tab, 0)
    for sid, row in enumerate(rows + extra):
        if sid >= n:
            table[sid] = 0
        for c, t in row.items():
            table[sid, int(np.searchsorted(nb, ord(c), side="right") - 1)] = t
    acc = np.zeros(total, bool)
    acc[:n] = value.accepting
    body = F.minimize(F.CharDFA(nb, table, acc, value.start))
    node = F.from_dfa(body)
    return F.cat(F.lit('"'), node, F.lit('"')) if quote else node


SURR_LO, SURR_HI = F.SURR


import numpy as np  # noqa: E402  (used above, kept near its use for readability)


def canonical_text(value: Any, seps=(", ", ": ")) -> str:
    return json.dumps(value, ensure_ascii=False, separators=seps)


# ---- numbers -----------------------------------------------------------------------------


def _dec(x) -> Decimal:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(x)
    if isinstance(x, float) and not math.isfinite(x):
        raise ValueError(x)
    return Decimal(repr(x)) if isinstance(x, float) else Decimal(x)


class _Cmp:
    """Magnitude comparison of a canonical decimal text with a constant ``|c|``."""

    def __init__(self, c: Decimal):
        c = abs(c)
        ip, _, fp = f"{c:f}".partition(".")
        self.ci = ip.lstrip("0") or "0"
        self.cf = fp.rstrip("0")

    def start(self):
        return ("i", 0, 0)

    def int_digit(self, st, d: str):
        _, n, pc = st
        L = len(self.ci)
        if n < L:
            if pc == 0:
                pc = (d > self.ci[n]) - (d < self.ci[n])
            return ("i", n + 1, pc)
        return ("i", L + 1, pc)

    def end_int(self, st):
        _, n, pc = st
        L = len(self.ci)
        r = -1 if n < L else (1 if n > L else pc)
        return ("f", 0, r)

    def frac_digit(self, st, d: str):
        _, k, r = st
        if r != 0:
            return st
        cd = self.cf[k] if k < len(self.cf) else "0"
        r = (d > cd) - (d < cd)
        return ("f", min(k + 1, len(self.cf)), r)

    def result(self, st) -> int:
        if st[0] == "i":
            st = self.end_int(st)
        _, k, r = st
        if r == 0 and k < len(self.cf):
            return -1  # |c| has more (nonzero) fraction digits
        return r


def number_dfa(integer: bool, bounds: list, multiple: Decimal | None, max_states: int,
               what: str) -> F.CharDFA:
    """Canonical number texts (integers when ``integer``) within ``bounds`` (a list of
    ``(c, op)`` with op in ``>= > <= <``) and a multiple of ``multiple``."""
    cmps = [(_Cmp(c), c, op) for c, op in bounds]
    if multiple is not None:
        sign, digits, exp = multiple.normalize().as_tuple()
        p = int("".join(map(str, digits)))
        q = -exp if exp < 0 else 0
        if exp > 0:
            p *= 10 ** exp
    else:
        p, q = 1, 0
    # state: (phase, neg, zero, cmp states, rem, fdigits)
    # phase: 'S' start, '-' after minus, 'Z' int "0", 'I' int digits, '.' dot, 'F' frac
    start = ("S", False, True, tuple(c.start() for c, _, _ in cmps), 0, 0)

    def step(st, ch):
        ph, neg, zero, cs, rem, f = st
        if ch == "-":
            return ("-", True, zero, cs, rem, f) if ph == "S" else None
        if ch == ".":
            if ph not in ("Z", "I"):
                return None
            return (".", neg, zero, tuple(c.end_int(s) for (c, _, _), s in zip(cmps, cs)), rem, 0)
        d = ch
        if ph in ("S", "-"):
            nph = "Z" if d == "0" else "I"
        elif ph == "I":
            nph = "I"
        elif ph in (".", "F"):
            nph = "F"
        else:
            return None  # digit after a leading "0"
        if nph in ("Z", "I"):
            cs = tuple(c.int_digit(s, d) for (c, _, _), s in zip(cmps, cs))
            rem = (rem * 10 + int(d)) % p
        else:
            if integer and d != "0":
                return None
            cs = tuple(c.frac_digit(s, d) for (c, _, _), s in zip(cmps, cs))
            if f < q:
                rem = (rem * 10 + int(d)) % p
                f += 1
            elif multiple is not None and d != "0":
                return None  # not a multiple: more fraction digits than the step has
        return (nph, neg, zero and d == "0", cs, rem, f)

    def accept(st):
        ph, neg, zero, cs, rem, f = st
        if ph not in ("Z", "I", "F"):
            return False
        if (rem * pow(10, q - f, p)) % p:
            return False
        for (c, cval, op), s in zip(cmps, cs):
            r = c.result(s)
            if zero:
                v = -((cval > 0) - (cval < 0))
            elif neg:
                v = -1 if cval >= 0 else -r
            else:
                v = 1 if cval < 0 else r
            ok = {">=": v >= 0, ">": v > 0, "<=": v <= 0, "<": v < 0}[op]
            if not ok:
                return False
        return True

    return F.dfa_from_char_step(start, step, accept, "0123456789-.", max_states=max_states,
                                what=what)


# ---- the compiler ------------------------------------------------------------------------

SLOTS = ("null", "boolean", "number", "string", "array", "object")
#: the universes (every value of a type to a depth) depend only on these options: shared
_UNIVERSES: dict = {}


class _Compiler:
    def __init__(self, root, seps, max_depth: int, max_states: int, whitespace: bool,
                 any_order: bool = False):
        self.any_order = any_order
        self.root = root
        self.item_sep, self.key_sep = seps
        self.max_depth = max_depth
        self.max_states = max_states
        self.ws = whitespace
        self.anchors = {}
        self.dyn_anchors = {}
        self.ids = {}
        self.base_of = {}
        self._index(root, "")
        self._base = ""
        self._universe: dict = {}
        self._ref_chain = 0
        #: the dynamic scope: base URIs of the schema resources entered, outermost first
        self._scope: list = []
        self._eval_chain = 0
        self._eval_kw = "unevaluatedProperties"
        #: member names declared by the in-place subschemas at the current instance location
        #: (see `inplace_names`); None between locations
        self._ctx = None

    # -- references --
    def _index(self, s, path, base: str = ""):
        """Records ``$id`` documents (by absolute URI), ``$anchor``s (per base URI) and the
        base URI in effect at every subschema."""
        if isinstance(s, dict):
            if isinstance(s.get("$id"), str):
                base = _join(base, s["$id"])
                self.ids[base] = s
            if isinstance(s.get("$anchor"), str):
                self.anchors[(base, s["$anchor"])] = s
            if isinstance(s.get("$dynamicAnchor"), str):
                # a $dynamicAnchor is also a plain anchor for $ref and for the initial
                # resolution of $dynamicRef
                self.anchors.setdefault((base, s["$dynamicAnchor"]), s)
                self.dyn_anchors.setdefault((base, s["$dynamicAnchor"]), s)
            self.base_of[id(s)] = base
            for k, v in s.items():
                if k in ("enum", "const", "examples", "default"):
                    continue  # values, not schemas
                if k in _NAME_MAPS and isinstance(v, dict):
                    # names of subschemas: a $defs entry may be called "default"
                    for name, sub in v.items():
                        self._index(sub, f"{path}/{k}/{name}", base)
                    continue
                self._index(v, f"{path}/{k}", base)
        elif isinstance(s, list):
            for i, v in enumerate(s):
                self._index(v, f"{path}/{i}", base)

    def resolve(self, ref: str, path: str, base: str = ""):
        """The schema ``ref`` names, resolved against ``base`` (same document only)."""
        if not isinstance(ref, str):
            raise _fail(path, f"'$ref' must be a string, got {ref!r}")
        full = _join(base, ref)
        url, _, frag = full.partition("#")
        doc = self.root if url == "" else self.ids.get(url)
        if doc is None:
            raise _fail(path, f"'$ref' {ref!r} points outside this schema (only references "
                        "into the same document, by JSON pointer, $id or $anchor, are supported)")
        frag = urllib.parse.unquote(frag)
        if frag and not frag.startswith("/"):
            got = self.anchors.get((url, frag))
            if got is None:
                raise _fail(path, f"'$ref' {ref!r}: no $anchor {frag!r}")
            return got
        node = doc
        for part in frag.split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise _fail(path, f"'$ref' {ref!r} does not resolve in this schema")
        return node

    def resolve_dynamic(self, ref: str, path: str, base: str = ""):
        """The schema a ``$dynamicRef`` names (draft 2020-12, section 8.2.3.2): resolved as
        ``$ref``; when the fragment is a plain name and the schema found carries a
        ``$dynamicAnchor`` of that name, the outermost resource of the dynamic scope (the
        resources entered on the way here) with a ``$dynamicAnchor`` of that name wins."""
        if not isinstance(ref, str):
            raise _fail(path, f"'$dynamicRef' must be a string, got {ref!r}")
        target = self.resolve(ref, path, base)
        frag = urllib.parse.unquote(_join(base, ref).partition("#")[2])
        if frag and not frag.startswith("/") and isinstance(target, dict) \
                and target.get("$dynamicAnchor") == frag:
            for b in self._scope:
                got = self.dyn_anchors.get((b, frag))
                if got is not None:
                    return got
        return target

    def _enter(self, s):
        """Makes ``s`` the current schema: its base URI, and its resource pushed on the
        dynamic scope when it starts a new one. Returns the state for `_leave`."""
        saved = (self._base, len(self._scope))
        self._base = self.base_of.get(id(s), self._base)
        if not self._scope or self._scope[-1] != self._base:
            self._scope.append(self._base)
        return saved

    def _leave(self, saved):
        self._base = saved[0]
        del self._scope[saved[1]:]

    def refs_of(self, s, path):
        """``[(target, path)]`` of the ``$ref`` and ``$dynamicRef`` of ``s``."""
        out = []
        if "$ref" in s:
            out.append((self.resolve(s["$ref"], path + "/$ref", self._base), path + "/$ref"))
        if "$dynamicRef" in s:
            out.append((self.resolve_dynamic(s["$dynamicRef"], path + "/$dynamicRef", self._base),
                        path + "/$dynamicRef"))
        return out

    # -- universes --
    def sep(self, ch: str) -> F.Node:
        if self.ws:
            w = _ws_node(True)
            return F.cat(w, F.lit(ch), w)
        return F.lit(self.item_sep if ch == "," else self.key_sep)

    def universe(self, slot: str, d: int) -> F.Node:
        key = (slot, d, self.item_sep, self.key_sep, self.ws, self.max_states)
        got = _UNIVERSES.get(key)
        if got is not None:
            return got
        if slot == "null":
            n = F.lit("null")
        elif slot == "boolean":
            n = F.alt(F.lit("true"), F.lit("false"))
        elif slot == "number":
            n = _NUMBER_TEXT
        elif slot == "string":
            n = self.string_text(F.compile_dfa(F.star(F.ANY)))
        elif d <= 0:
            n = F.EMPTY
        elif slot == "array":
            n = self.list_node("[", "]", [self.value_universe(d - 1)], _loop, _yes, 0)
        else:
            member = F.cat(self.universe("string", d), self.sep(":"), self.value_universe(d - 1))
            n = self.list_node("{", "}", [member], _loop, _yes, 0)
        if n.op != "empty":
            n = F.from_dfa(F.compile_dfa(n, self.max_states, "json_schema"))
        _UNIVERSES[key] = n
        return n

    def value_universe(self, d: int) -> F.Node:
        return F.alt(*[self.universe(t, d) for t in SLOTS])

    def empty_list(self, o: str, c: str) -> F.Node:
        return F.cat(F.lit(o), _ws_node(self.ws), F.lit(c))

    def string_text(self, value: F.CharDFA) -> F.Node:
        return encode_string(value)

    def list_node(self, o, c, elems, delta, accept, start) -> F.Node:
        """``o e1 , e2 , ... c`` driven by an automaton over element kinds: ``delta(q, a)``
        is the next state after an element of kind ``a`` (None: not allowed), ``accept(q)``
        whether the list may end in ``q``."""
        return F.Node("list", (o, c, tuple(elems), delta, accept, start, self.sep(","),
                               _ws_node(self.ws)))

    # -- schemas --
    def compile(self, s, path: str, d: int, pol: bool) -> dict:
        """Slot -> Node. ``pol`` True: a subset of the valid texts; False: a superset."""
        if s is True:
            return {t: self.universe(t, d) for t in SLOTS}
        if s is False:
            return {t: F.EMPTY for t in SLOTS}
        if not isinstance(s, dict):
            raise _fail(path, f"a schema must be an object or a boolean, got {s!r}")
        for kw in s:
            if kw in UNSUPPORTED:
                raise _fail(path, f"unsupported keyword {kw!r}")
        fresh = self._ctx is None
        if fresh:
            self._ctx = self.inplace_names(s)
        saved = self._enter(s)
        try:
            return self._compile(s, path, d, pol)
        finally:
            self._leave(saved)
            if fresh:
                self._ctx = None

    def descend(self, s, path, d, pol) -> dict:
        """`compile` at a new instance location (a member or an item): a fresh context."""
        outer, self._ctx = self._ctx, None
        try:
            return self.compile(s, path, d, pol)
        finally:
            self._ctx = outer

    def inplace_pieces(self, s) -> list:
        """The schemas applying to the same instance as ``s`` (``s``, then through ``$ref``,
        ``$dynamicRef`` (resolved statically), ``allOf``, ``anyOf``, ``oneOf``, ``if``,
        ``then``, ``else``, ``dependentSchemas``; not through ``not``), in that order."""
        out, seen = [], set()

        def walk(x, depth):
            if not isinstance(x, dict) or id(x) in seen or depth > 32:
                return
            seen.add(id(x))
            out.append(x)
            base = self.base_of.get(id(x), "")
            for kw in ("$ref", "$dynamicRef"):
                if isinstance(x.get(kw), str):
                    try:
                        walk(self.resolve(x[kw], "", base), depth + 1)
                    except ValueError:
                        pass
            for kw in ("allOf", "anyOf", "oneOf"):
                if isinstance(x.get(kw), list):
                    for y in x[kw]:
                        walk(y, depth + 1)
            for kw in ("if", "then", "else"):
                walk(x.get(kw), depth + 1)
            if isinstance(x.get("dependentSchemas"), dict):
                for y in x["dependentSchemas"].values():
                    walk(y, depth + 1)

        walk(s, 0)
        return out

    def inplace_names(self, s) -> list:
        """Member names the in-place subschemas of ``s`` declare (``properties``,
        ``required``, ``dependentRequired``), in `inplace_pieces` order: the canonical member
        order at this location, shared by all those subschemas so that their orders agree."""
        names: dict = {}
        for x in self.inplace_pieces(s):
            props = x.get("properties")
            if isinstance(props, dict):
                names.update(dict.fromkeys(props))
            if isinstance(x.get("required"), list):
                names.update(dict.fromkeys(r for r in x["required"] if isinstance(r, str)))
            dep = x.get("dependentRequired")
            if isinstance(dep, dict):
                for a, bs in dep.items():
                    names[a] = None
                    if isinstance(bs, list):
                        names.update(dict.fromkeys(b for b in bs if isinstance(b, str)))
        return list(names)

    def _compile(self, s, path, d, pol):
        # None: the slot is the universe (materialised only when something needs it, so an
        # unconstrained slot costs no product automaton)
        slots: dict = {t: None for t in SLOTS}

        def narrow(t, node, inside=True):
            """Intersects slot ``t`` with ``node``; ``inside``: node is within the universe."""
            cur = slots[t]
            if cur is not None and cur.op == "empty":
                return
            if node.op == "empty":
                slots[t] = F.EMPTY
            elif cur is None:
                slots[t] = node if inside else F.inter(self.universe(t, d), node)
            else:
                slots[t] = F.inter(cur, node)

        for target, rpath in self.refs_of(s, path):
            self._ref_chain += 1
            try:
                if self._ref_chain > 24:
                    # a reference cycle that does not descend into the document
                    sub = {t: (F.EMPTY if pol else self.universe(t, d)) for t in SLOTS}
                else:
                    sub = self.compile(target, rpath, d, pol)
            finally:
                self._ref_chain -= 1
            for t in SLOTS:
                narrow(t, sub[t])
        types = s.get("type")
        if types is not None:
            tl = [types] if isinstance(types, str) else types
            if not isinstance(tl, list) or not tl:
                raise _fail(path, f"'type' must be a string or a non-empty list, got {types!r}")
            for t in tl:
                if t not in SLOTS and t != "integer":
                    raise _fail(path, f"unknown type {t!r}")
            for t in SLOTS:
                if t not in tl and not (t == "number" and "integer" in tl):
                    slots[t] = F.EMPTY
            if "integer" in tl and "number" not in tl:
                # 1.0 is an integer in JSON Schema; generating it is surprising, so positive
                # positions (a subset) write integers without a fraction
                narrow("number", _INTEGER_TEXT if not pol else _INT_TEXT)
        if "const" in s or "enum" in s:
            values = []
            if "const" in s:
                values.append(s["const"])
            if "enum" in s:
                if not isinstance(s["enum"], list):
                    raise _fail(path, f"'enum' must be a list, got {s['enum']!r}")
                values.extend(s["enum"]) if "const" not in s else None
                if "const" in s:
                    values = [v for v in s["enum"] if _json_eq(v, s["const"])]
            for v in values:
                try:
                    json.dumps(v, allow_nan=False)
                except (TypeError, ValueError):
                    raise _fail(path, f"enum/const value {v!r} is not a JSON value (NaN, "
                                "infinities and non-JSON types cannot be generated as JSON)"
                                ) from None
            by_slot = {t: [] for t in SLOTS}
            for v in values:
                by_slot[_slot_of(v)].append(self.literal_node(v, path, pol))
            for t in SLOTS:
                narrow(t, F.alt(*by_slot[t]), inside=False)
        for kw, op in (("allOf", "all"), ("anyOf", "any"), ("oneOf", "one")):
            if kw in s:
                subs = s[kw]
                if not isinstance(subs, list) or not subs:
                    raise _fail(path, f"'{kw}' must be a non-empty list")
                if op == "all":
                    for k, sub in enumerate(subs):
                        c = self.compile(sub, f"{path}/{kw}/{k}", d, pol)
                        for t in SLOTS:
                            narrow(t, c[t])
                elif op == "any":
                    cs = [self.compile(sub, f"{path}/{kw}/{k}", d, pol) for k, sub in enumerate(subs)]
                    for t in SLOTS:
                        narrow(t, F.alt(*[c[t] for c in cs]))
                else:
                    same = [self.compile(sub, f"{path}/{kw}/{k}", d, pol) for k, sub in enumerate(subs)]
                    other = [self.compile(sub, f"{path}/{kw}/{k}", d, not pol) for k, sub in enumerate(subs)]
                    for t in SLOTS:
                        branches = []
                        for i in range(len(subs)):
                            rest = F.alt(*[other[j][t] for j in range(len(subs)) if j != i])
                            branches.append(F.inter(same[i][t], F.neg(rest)) if rest.op != "empty"
                                            else same[i][t])
                        narrow(t, F.alt(*branches))
        if "not" in s:
            c = self.compile(s["not"], path + "/not", d, not pol)
            for t in SLOTS:
                if c[t].op != "empty":
                    narrow(t, F.neg(c[t]), inside=False)
        if "if" in s and ("then" in s or "else" in s):
            ci_same = self.compile(s["if"], path + "/if", d, pol)
            ci_other = self.compile(s["if"], path + "/if", d, not pol)
            ct = self.compile(s.get("then", True), path + "/then", d, pol)
            ce = self.compile(s.get("else", True), path + "/else", d, pol)
            for t in SLOTS:
                a = F.inter(ci_same[t], ct[t])
                b = F.inter(ce[t], F.neg(ci_other[t])) if ci_other[t].op != "empty" else ce[t]
                narrow(t, F.alt(a, b))
        def live(t):
            return slots[t] is None or slots[t].op != "empty"

        if live("number"):
            num = self.number_keywords(s, path, pol)
            if num is not None:
                narrow("number", num)
        if live("string"):
            st = self.string_keywords(s, path, pol)
            if st is not None:
                narrow("string", st)
        if live("array") and _has(s, _ARRAY_KW):
            narrow("array", self.array_node(s, path, d, pol))
        if live("object") and _has(s, _OBJECT_KW):
            narrow("object", self.object_node(s, path, d, pol))
        if "dependentSchemas" in s:
            deps = s["dependentSchemas"]
            if not isinstance(deps, dict):
                raise _fail(path, "'dependentSchemas' must be an object of schemas")
            for k, sub in deps.items():
                if not live("object"):
                    break
                # (has k => sub) == sub or not has k; "not has k" is exact, so this is a
                # subset/superset exactly when sub's compilation is
                c = self.compile(sub, f"{path}/dependentSchemas/{_ptr(k)}", d, pol)
                narrow("object", F.alt(c["object"], self.key_node(k, d, False)))
        if "unevaluatedProperties" in s and live("object"):
            narrow("object", self.unevaluated(s, path, d, pol, "object"))
        if "unevaluatedItems" in s and live("array"):
            narrow("array", self.unevaluated(s, path, d, pol, "array"))
        return {t: (self.universe(t, d) if n is None else n) for t, n in slots.items()}

    # -- dependentSchemas, unevaluatedProperties, unevaluatedItems --
    def key_node(self, k: str, d: int, present: bool) -> F.Node:
        """Objects (any member order, keys in any spelling) that have (``present``) or lack a
        member named ``k``: exact within the universe."""
        key = ("key", k, d, present)
        if key in self._universe:
            return self._universe[key]
        if d <= 0:
            return F.EMPTY
        v = self.value_universe(d - 1)
        other = self.string_text(F.compile_dfa(F.inter(F.star(F.ANY), F.neg(F.lit(k))),
                                               self.max_states, "json_schema key"))
        other_m = F.cat(other, self.sep(":"), v)
        if present:
            this_m = F.cat(self.literal_node(k, "", False), self.sep(":"), v)
            n = self.list_node("{", "}", [this_m, other_m], _seen_first, _is_one, 0)
        else:
            n = self.list_node("{", "}", [other_m], _loop, _yes, 0)
        self._universe[key] = n
        return n

    def unevaluated(self, s, path, d, pol, kind) -> F.Node:
        """The ``unevaluatedProperties`` (kind "object") or ``unevaluatedItems`` ("array")
        constraint of ``s``.

        Which members/items count as evaluated depends on which in-place subschemas
        (``allOf``/``anyOf``/``oneOf``/``if``-``then``-``else``/``dependentSchemas``/``$ref``/
        ``$dynamicRef``) the instance satisfies. `eval_cases` lists *cases* ``(C, K)``: when
        the instance is in ``C`` (and valid), at least the members/items described by ``K``
        are evaluated; for every valid instance some case has ``K`` = exactly its evaluated
        set. Since the constraint ``U(K)`` ("every member outside K satisfies the schema")
        only weakens as K grows, ``valid(s) = rest(s) ∧ ∪_cases (C ∩ U(K))``, exactly, and
        with every part compiled with the same polarity the union is a subset (positive
        positions) or a superset (under a negation) as required.
        """
        kw = "unevaluatedProperties" if kind == "object" else "unevaluatedItems"
        outer_kw, self._eval_kw = self._eval_kw, kw
        try:
            cases = self.eval_cases(s, path, d, pol, kind, own=False)
        finally:
            self._eval_kw = outer_kw
        out = []
        for C, K in cases:
            u = self.unevaluated_node(kind, K, s[kw], f"{path}/{kw}", d, pol)
            if u is None:
                out.append(C if C is not None else self.universe(kind, d))
            else:
                out.append(F.inter(C, u) if C is not None else u)
        return F.alt(*out)

    def unevaluated_node(self, kind, K, u, path, d, pol):
        """Arrays/objects whose members/items outside ``K`` satisfy ``u``: exact up to the
        compilation of ``u``; None when ``K`` covers everything."""
        if (K[2] if kind == "object" else K[1]):
            return None
        if d <= 0:
            return F.EMPTY
        uval = self.sub_value(u, path, d - 1, pol)
        if kind == "array":
            prefix, _, contains = K
            late = F.alt(uval, *contains)

            def delta(q, a):
                if a == 0:
                    return q + 1 if q < prefix else None
                return q if q >= prefix else None

            return self.list_node("[", "]", [self.value_universe(d - 1), late], delta, _yes, 0)
        names, pats, _ = K
        parts = [F.lit(n) for n in sorted(names)]
        for p in sorted(pats):
            try:
                parts.append(ecma_search_node(p))
            except ValueError as e:
                raise _fail(path, str(e)) from None
        ev = F.alt(*parts)
        what = f"json_schema object at {path}"
        ev_dfa = F.compile_dfa(ev, self.max_states, what)
        un_dfa = F.compile_dfa(F.inter(F.star(F.ANY), F.neg(ev)), self.max_states, what)
        elems = []
        if not ev_dfa.is_empty():
            elems.append(F.cat(self.string_text(ev_dfa), self.sep(":"), self.value_universe(d - 1)))
        if not un_dfa.is_empty() and uval.op != "empty":
            elems.append(F.cat(self.string_text(un_dfa), self.sep(":"), uval))
        return self.list_node("{", "}", elems, _loop, _yes, 0)

    def own_evaluated(self, s, path, d, pol, kind, own):
        """What the keywords of ``s`` itself evaluate (its subschemas aside)."""
        if kind == "object":
            props = s.get("properties", {})
            pats = s.get("patternProperties", {})
            names = frozenset(props) if isinstance(props, dict) else frozenset()
            pats = frozenset(pats) if isinstance(pats, dict) else frozenset()
            every = "additionalProperties" in s or (own and "unevaluatedProperties" in s)
            return (names, pats, every)
        prefix = s.get("prefixItems", [])
        n = len(prefix) if isinstance(prefix, list) else 0
        every = "items" in s or (own and "unevaluatedItems" in s)
        contains = ()
        if "contains" in s and not every and d > 0:
            contains = (self.sub_value(s["contains"], path + "/contains", d - 1, pol),)
        return (n, every, contains)

    @staticmethod
    def _k_union(kind, a, b):
        if kind == "object":
            return (a[0] | b[0], a[1] | b[1], a[2] or b[2])
        every = a[1] or b[1]
        return (max(a[0], b[0]), every, () if every else tuple(dict.fromkeys(a[2] + b[2])))

    @staticmethod
    def _k_covers(kind, a, b) -> bool:
        """Whether ``a`` evaluates at least what ``b`` does."""
        if kind == "object":
            return a[2] or (not b[2] and b[0] <= a[0] and b[1] <= a[1])
        return a[1] or (not b[1] and b[0] <= a[0] and set(b[2]) <= set(a[2]))

    def _k_empty(self, kind):
        return (frozenset(), frozenset(), False) if kind == "object" else (0, False, ())

    def _product(self, kind, xs, ys, path):
        out = []
        for C1, K1 in xs:
            for C2, K2 in ys:
                C = C2 if C1 is None else (C1 if C2 is None else F.inter(C1, C2))
                if C is not None and C.op == "empty":
                    continue
                out.append((C, self._k_union(kind, K1, K2)))
        return self._prune(kind, out, path)

    def _prune(self, kind, cases, path):
        out = []
        for C, K in cases:
            if any((C2 is None or C2 == C) and self._k_covers(kind, K2, K) for C2, K2 in out):
                continue
            out = [(C2, K2) for C2, K2 in out
                   if not ((C is None or C == C2) and self._k_covers(kind, K, K2))]
            out.append((C, K))
        if len(out) > MAX_EVAL_CASES:
            raise _fail(path, f"{self._eval_kw!r}: more than {MAX_EVAL_CASES} evaluation cases "
                        "(combinations of anyOf/oneOf/if/dependentSchemas branches that evaluate "
                        "different members) are not supported")
        return out

    def eval_cases(self, s, path, d, pol, kind, own=True):
        """``[(C, K)]``: see `unevaluated`. ``C`` is a Node of slot ``kind`` (None: no
        condition); ``own``: whether ``s``'s own unevaluated keyword counts (it does in a
        subschema: it evaluates everything it validated)."""
        empty = self._k_empty(kind)
        if not isinstance(s, dict):
            return [(None, empty)]
        saved = self._enter(s)
        self._eval_chain += 1
        try:
            if self._eval_chain > 24:
                raise _fail(path, f"{self._eval_kw!r} through a reference cycle that does not "
                            "descend into the instance is not supported")
            return self._eval_cases(s, path, d, pol, kind, own, empty)
        finally:
            self._eval_chain -= 1
            self._leave(saved)

    def _eval_cases(self, s, path, d, pol, kind, own, empty):
        cases = [(None, self.own_evaluated(s, path, d, pol, kind, own))]

        def branch(sub, spath):
            """Cases of a subschema that may fail: conditioned on its validity."""
            c = self.compile(sub, spath, d, pol)[kind]
            out = []
            for C, K in self.eval_cases(sub, spath, d, pol, kind):
                if K != empty:
                    C2 = c if C is None else F.inter(c, C)
                    if C2.op != "empty":
                        out.append((C2, K))
            return out

        for target, rpath in self.refs_of(s, path):
            cases = self._product(kind, cases, self.eval_cases(target, rpath, d, pol, kind), path)
        for k, sub in enumerate(s.get("allOf", []) if isinstance(s.get("allOf"), list) else []):
            cases = self._product(kind, cases, self.eval_cases(sub, f"{path}/allOf/{k}", d, pol, kind),
                                  path)
        # a subset of the satisfied branches also witnesses the case (U only weakens as K
        # grows): the empty subset (None, empty) is always a sound case
        for kw in ("anyOf", "oneOf"):
            subs = s.get(kw)
            if not isinstance(subs, list):
                continue
            per = [b for b in (branch(sub, f"{path}/{kw}/{k}") for k, sub in enumerate(subs)) if b]
            if kw == "oneOf":
                opts = [(None, empty)] + [x for b in per for x in b]
            else:
                opts = [(None, empty)]
                for b in per:
                    opts = opts + self._product(kind, opts, b, path)
            cases = self._product(kind, cases, self._prune(kind, opts, path), path)
        if "if" in s:
            ipath = path + "/if"
            # when `if` holds: its cases and those of `then` (which must then hold too)
            c_if = self.compile(s["if"], ipath, d, pol)[kind]
            then = (self.eval_cases(s["then"], path + "/then", d, pol, kind) if "then" in s
                    else [(None, empty)])
            opts = [(None, empty)] + self._product(
                kind, [(c_if, empty)] + branch(s["if"], ipath), then, path)
            els = [x for x in self.eval_cases(s.get("else", True), path + "/else", d, pol, kind)
                   if x[1] != empty]
            if els:
                co = self.compile(s["if"], ipath, d, not pol)[kind]
                nif = F.inter(self.universe(kind, d), F.neg(co)) if co.op != "empty" else None
                opts += [(nif if C is None else (C if nif is None else F.inter(nif, C)), K)
                         for C, K in els]
            cases = self._product(kind, cases, self._prune(kind, opts, path), path)
        deps = s.get("dependentSchemas")
        if kind == "object" and isinstance(deps, dict):
            for k, sub in deps.items():
                spath = f"{path}/dependentSchemas/{_ptr(k)}"
                has = self.key_node(k, d, True)
                opts = [(None, empty)] + [(has if C is None else F.inter(has, C), K)
                                          for C, K in self.eval_cases(sub, spath, d, pol, kind)
                                          if K != empty]
                cases = self._product(kind, cases, opts, path)
        return cases

    def literal_node(self, v, path: str, pol: bool = False) -> F.Node:
        """Every text of the universe that denotes the JSON value ``v`` (equal numbers in
        any spelling without exponent, strings with any escapes, object members in any
        order), so that ``enum``/``const`` stay exact under a negation too."""
        if v is None:
            return F.lit("null")
        if isinstance(v, bool):
            return F.lit("true" if v else "false")
        if isinstance(v, (int, float)):
            try:
                dv = _dec(v)
            except ValueError:
                return F.EMPTY
            if pol:  # a subset: as json.dumps writes the value, integral ones also as "n.0"
                text = json.dumps(v)
                if "e" in text or "n" in text.lower():
                    return F.EMPTY
                if dv == dv.to_integral_value():
                    n = str(int(dv))
                    return F.alt(F.lit(n), F.lit(n + ".0"))
                return F.lit(text)
            ip, _, fp = f"{abs(dv):f}".partition(".")
            ip = ip.lstrip("0") or "0"
            fp = fp.rstrip("0")
            frac = F.cat(F.lit("." + fp), F.star(F.lit("0"))) if fp else \
                F.opt(F.cat(F.lit("."), F.plus(F.lit("0"))))
            body = F.cat(F.lit(ip), frac)
            if dv == 0:
                return F.cat(F.opt(F.lit("-")), body)
            return F.cat(F.lit("-"), body) if dv < 0 else body
        if isinstance(v, str):
            return encode_string(F.compile_dfa(F.lit(v), self.max_states, "json_schema enum"))
        ws = _ws_node(self.ws)
        if isinstance(v, list):
            parts = [F.lit("["), ws]
            for k, x in enumerate(v):
                if k:
                    parts.append(self.sep(","))
                parts.append(self.literal_node(x, path, pol))
            return F.cat(*parts, ws, F.lit("]"))
        items = list(v.items())
        if len(items) > 6:
            raise _fail(path, f"an enum/const object with {len(items)} members (more than 6) "
                        "is not supported")
        import itertools

        orders = []
        for perm in itertools.permutations(items):
            parts = [F.lit("{"), ws]
            for k, (key, x) in enumerate(perm):
                if k:
                    parts.append(self.sep(","))
                parts += [self.literal_node(key, path, pol), self.sep(":"),
                          self.literal_node(x, path, pol)]
            orders.append(F.cat(*parts, ws, F.lit("}")))
        return F.alt(*orders)

    def number_keywords(self, s, path, pol):
        bounds = []
        for kw, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                       ("exclusiveMaximum", "<")):
            if kw in s:
                try:
                    bounds.append((_dec(s[kw]), op))
                except ValueError:
                    raise _fail(path, f"{kw!r} must be a number, got {s[kw]!r}") from None
        mult = None
        if "multipleOf" in s:
            try:
                mult = _dec(s["multipleOf"])
            except ValueError:
                raise _fail(path, f"'multipleOf' must be a number, got {s['multipleOf']!r}") from None
            if mult <= 0:
                raise _fail(path, "'multipleOf' must be > 0")
            _, digits, exp = mult.normalize().as_tuple()
            if len(digits) > 7:
                if pol:
                    return F.EMPTY if False else self._refuse(path, "multipleOf", mult)
                mult = None
        if not bounds and mult is None:
            return None
        return F.from_dfa(number_dfa(False, bounds, mult, self.max_states,
                                     f"json_schema number at {path or '#'}"))

    def _refuse(self, path, kw, v):
        raise _fail(path, f"{kw!r} {v} needs too many states")

    def string_keywords(self, s, path, pol):
        parts = []
        lo = s.get("minLength")
        hi = s.get("maxLength")
        for kw, v in (("minLength", lo), ("maxLength", hi)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                if isinstance(v, float) and v.is_integer() and v >= 0:
                    continue
                raise _fail(path, f"{kw!r} must be a non-negative integer, got {v!r}")
        lo = int(lo) if lo is not None else None
        hi = int(hi) if hi is not None else None
        if lo is not None or hi is not None:
            if hi is not None and lo is not None and hi < lo:
                raise _fail(path, f"minLength {lo} exceeds maxLength {hi}")
            parts.append(F.rep(F.ANY, lo or 0, hi))
        if "pattern" in s:
            try:
                parts.append(ecma_search_node(s["pattern"]))
            except ValueError as e:
                raise _fail(path + "/pattern", f"bad 'pattern': {e}") from None
        if "format" in s and pol:
            fmt = s["format"]
            if fmt in FORMATS:
                parts.append(_rx(FORMATS[fmt]))
            # unknown formats are annotations (the specification's default): no constraint
        if not parts:
            return None
        what = f"json_schema string at {path or '#'}"
        value = F.compile_dfa(F.inter(*parts) if len(parts) > 1 else parts[0], self.max_states, what)
        return self.string_text(value)

    def sub_value(self, s, path, d, pol) -> F.Node:
        c = self.descend(s, path, d, pol)
        return F.alt(*[c[t] for t in SLOTS])

    def array_node(self, s, path, d, pol) -> F.Node:
        if d <= 0:
            return F.EMPTY
        prefix = s.get("prefixItems", [])
        if not isinstance(prefix, list):
            raise _fail(path, "'prefixItems' must be a list of schemas")
        items = s.get("items", True)
        if isinstance(items, list):
            raise _fail(path, "'items' as a list is the old tuple form; use 'prefixItems'")
        lo = _count(s, "minItems", path) or 0
        hi = _count(s, "maxItems", path)
        k = len(prefix)
        pos_schemas = list(prefix) + [items]
        if s.get("uniqueItems") is True:
            fin = None if "contains" in s else [_finite(x) for x in pos_schemas]
            if fin is not None and all(f is not None for f in fin) and \
                    len({_vkey(v) for f in fin for v in f}) <= 8:
                return self._unique_finite(fin, k, lo, hi, path, pol)
            if pol:
                hi = 1 if hi is None else min(hi, 1)  # a subset: lists of at most one item
        has_contains = "contains" in s
        cmin = _count(s, "minContains", path) if has_contains else None
        cmax = _count(s, "maxContains", path) if has_contains else None
        if cmin is None:
            cmin = 1
        elems = []
        kinds = []  # (position class, matches contains)
        for i, sch in enumerate(pos_schemas):
            e = self.sub_value(sch, f"{path}/{'prefixItems/' + str(i) if i < k else 'items'}",
                               d - 1, pol)
            if has_contains:
                cs = self.sub_value(s["contains"], path + "/contains", d - 1, pol)
                co = self.sub_value(s["contains"], path + "/contains", d - 1, not pol)
                elems.append(F.inter(e, cs))
                kinds.append((i, True))
                elems.append(F.inter(e, F.neg(co)))
                kinds.append((i, False))
            else:
                elems.append(e)
                kinds.append((i, False))
        if has_contains and cmin == 0 and cmax is None:
            pass
        ccap = max(cmin, (cmax + 1) if cmax is not None else 0)
        lcap = max(lo, (hi + 1) if hi is not None else 0, k)

        def delta(q, a):
            n, c = q
            pos, hit = kinds[a]
            if pos != min(n, k):
                return None
            n2 = min(n + 1, lcap)
            if hi is not None and n + 1 > hi:
                return None
            c2 = min(c + 1, ccap) if hit else c
            if cmax is not None and c2 > cmax:
                return None
            return (n2, c2)

        def accept(q):
            n, c = q
            return n >= lo and (not has_contains or c >= cmin)

        return self.list_node("[", "]", elems, delta, accept, (0, 0))

    def _unique_finite(self, fin, k, lo, hi, path, pol) -> F.Node:
        """``uniqueItems`` exactly when every position takes one of a few literal values: the
        automaton remembers which values were used."""
        elems, kinds = [], []
        for i, vals in enumerate(fin):
            for v in vals:
                elems.append(self.literal_node(v, path, pol))
                kinds.append((i, _vkey(v)))
        lcap = max(lo, (hi + 1) if hi is not None else 0, k)

        def delta(q, a):
            n, used = q
            pos, key = kinds[a]
            if pos != min(n, k) or key in used or (hi is not None and n + 1 > hi):
                return None
            return (min(n + 1, lcap), used | {key})

        return self.list_node("[", "]", elems, delta, lambda q: q[0] >= lo, (0, frozenset()))

    def object_node(self, s, path, d, pol) -> F.Node:
        if d <= 0:
            return F.EMPTY
        props = s.get("properties", {})
        if not isinstance(props, dict):
            raise _fail(path, "'properties' must be an object")
        req = s.get("required", [])
        if not isinstance(req, list) or not all(isinstance(r, str) for r in req):
            raise _fail(path, "'required' must be a list of strings")
        pprops = s.get("patternProperties", {})
        if not isinstance(pprops, dict):
            raise _fail(path, "'patternProperties' must be an object")
        if len(pprops) > 4:
            raise _fail(path, "more than 4 patternProperties are not supported")
        addl = s.get("additionalProperties", True)
        pnames = s.get("propertyNames", True)
        dep = s.get("dependentRequired", {})
        lo = _count(s, "minProperties", path) or 0
        hi = _count(s, "maxProperties", path)
        # declared members: those of every in-place subschema at this location, in one order
        # (so that the canonical orders of allOf/$ref/... parts agree); a name this schema
        # does not list in properties takes its value schema from patternProperties /
        # additionalProperties, as an undeclared member would
        names = list(props) + [r for r in dict.fromkeys(req) if r not in props]
        for a, bs in dep.items():
            for b in [a, *bs]:
                if b not in names:
                    names.append(b)
        ctx = self._ctx or []
        if ctx and len(set(ctx) | set(names)) <= 48:
            names = list(dict.fromkeys(list(ctx) + names))
        if len(names) > 48:
            raise _fail(path, f"{len(names)} declared properties exceed the limit of 48")
        pats = []
        for p in pprops:
            try:
                node = ecma_search_node(p)
            except ValueError as e:
                raise _fail(path + "/patternProperties", str(e)) from None
            pats.append((p, node, F.compile_dfa(node, self.max_states, "patternProperties")))
        what = f"json_schema object at {path or '#'}"
        name_ok = self.descend(pnames, path + "/propertyNames", 0, pol)["string"]
        name_dfa = F.compile_dfa(name_ok, self.max_states, what) if name_ok.op != "empty" else None
        elems, kinds = [], []
        for j, name in enumerate(names):
            sch = [props[name]] if name in props else []
            for p, node, pd in pats:
                if pd.accepts(name):
                    sch.append(pprops[p])
            if not sch:
                if addl is False:
                    continue  # never a member here (it may still be required: then empty)
                sch = [addl]
            key_text = canonical_text(name)
            if name_dfa is None or not _accepts_text(name_dfa, key_text):
                continue  # propertyNames rejects this name: the member never occurs
            vals = [self.sub_value(x, f"{path}/properties/{name}", d - 1, pol) for x in sch]
            # under a negation (a superset) the key in every spelling, else "\u0061" would
            # escape the declared member's schema
            key_node = F.lit(key_text) if pol else self.literal_node(name, path, False)
            elems.append(F.cat(key_node, self.sep(":"), F.inter(*vals)))
            kinds.append(("decl", j))
        declared = F.alt(*[F.lit(n) for n in names]) if names else F.EMPTY
        req_idx = {names.index(r) for r in req}
        # extra members: regions by the set of patterns their key matches
        if name_dfa is not None:
            for mask in range(1 << len(pats)):
                key_parts = [F.neg(declared)] if names else []
                vals = []
                for b, (p, node, _) in enumerate(pats):
                    if mask >> b & 1:
                        key_parts.append(node)
                        vals.append(self.sub_value(pprops[p], f"{path}/patternProperties/{p}", d - 1, pol))
                    else:
                        key_parts.append(F.neg(node))
                if not mask:
                    if addl is False:
                        continue
                    vals.append(self.sub_value(addl, path + "/additionalProperties", d - 1, pol))
                key_val = F.compile_dfa(F.inter(F.star(F.ANY), *key_parts), self.max_states, what)
                if key_val.is_empty():
                    continue
                key_node = F.inter(self.string_text(key_val), F.from_dfa(name_dfa))
                value = F.inter(*vals) if len(vals) > 1 else vals[0]
                if value.op == "empty":
                    continue
                elems.append(F.cat(key_node, self.sep(":"), value))
                kinds.append(("extra", mask))
        n = len(names)
        cap = max(lo, (hi + 1) if hi is not None else 0)
        dep_sets = {names.index(a): {names.index(b) for b in bs} for a, bs in dep.items()}
        track = sorted({a for a in dep_sets} | {b for v in dep_sets.values() for b in v})
        if len(track) > 10:
            raise _fail(path, "dependentRequired over more than 10 properties is not supported")

        # Member order: the canonical order (declared members as listed, then the others) is
        # a subset of the valid texts, right for a positive position. Under a negation (a
        # superset is needed there) and with any_order, members may come in any order; then
        # the automaton tracks which required (any_order: which declared) members were seen.
        free = self.any_order or not pol
        # (any_order tracks only required members: a declared member may repeat, as JSON
        # parsers then keep one valid value; tracking all would cost 2**n states)
        watch = req_idx | set(track)
        if free and len(watch) > 12:
            raise _fail(path, f"{len(watch)} tracked properties exceed 12 for any member order "
                        "(2**k states)")

        def delta(q, a):
            i, c, seen = q
            kind, j = kinds[a]
            if hi is not None and c + 1 > hi:
                return None
            c2 = min(c + 1, cap)
            if free:
                if kind == "decl":
                    return (0, c2, seen | ({j} & watch))
                return (0, c2, seen)
            if kind == "decl":
                if j < i or any(r in req_idx for r in range(i, j)):
                    return None
                seen2 = seen | ({j} & set(track))
                return (j + 1, c2, frozenset(seen2))
            if any(r in req_idx for r in range(i, n)):
                return None  # extras come after every declared member (canonical order)
            return (n, c2, seen)

        def accept(q):
            i, c, seen = q
            if free:
                if not req_idx <= seen:
                    return False
            elif any(r in req_idx for r in range(i, n)):
                return False
            for a_, bs in dep_sets.items():
                if a_ in seen and not bs <= seen:
                    return False
            return c >= lo

        return self.list_node("{", "}", elems, delta, accept, (0, 0, frozenset()))


_ARRAY_KW = {"items", "prefixItems", "contains", "minItems", "maxItems", "uniqueItems",
             "minContains", "maxContains"}
_OBJECT_KW = {"properties", "required", "additionalProperties", "patternProperties",
              "propertyNames", "minProperties", "maxProperties", "dependentRequired"}


_NAME_MAPS = {"$defs", "definitions", "properties", "patternProperties", "dependentSchemas"}


def _has(s: dict, kws) -> bool:
    return any(k in s for k in kws)


def _count(s, kw, path):
    v = s.get(kw)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise _fail(path, f"{kw!r} must be a non-negative integer, got {v!r}")
    return v


def _slot_of(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _json_eq(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _finite(s):
    """The values a schema allows when it is a plain finite set (enum/const/boolean/null),
    else None."""
    if s is False:
        return []
    if not isinstance(s, dict):
        return None
    keys = set(s) - ANNOTATIONS
    if keys == {"enum"} and isinstance(s["enum"], list):
        return list(s["enum"])
    if keys == {"const"}:
        return [s["const"]]
    if keys == {"type"}:
        t = [s["type"]] if isinstance(s["type"], str) else s["type"]
        if isinstance(t, list) and set(t) <= {"boolean", "null"}:
            return ([True, False] if "boolean" in t else []) + ([None] if "null" in t else [])
    return None


def _vkey(v) -> str:
    """A key equal for JSON-equal values (1 and 1.0; objects in any member order)."""
    def norm(x):
        if isinstance(x, bool) or x is None or isinstance(x, str):
            return x
        if isinstance(x, (int, float)):
            return ("n", str(_dec(x).normalize()) if math.isfinite(x) else repr(x))
        if isinstance(x, list):
            return [norm(y) for y in x]
        return {"o": sorted((k, norm(y)) for k, y in x.items())}
    return json.dumps(norm(v), sort_keys=True, default=str)


def _join(base: str, ref: str) -> str:
    """``ref`` resolved against ``base`` (URNs and fragments too, which urljoin mishandles)."""
    if ref.startswith("#"):
        return base.partition("#")[0] + ref
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", ref) or not base:
        return ref
    if base.startswith("urn:"):
        return ref
    return urllib.parse.urljoin(base, ref)


def _loop(q, a):
    return 0


def _seen_first(q, a):
    return 1 if a == 0 else q


def _is_one(q):
    return q == 1


def _ptr(k: str) -> str:
    return k.replace("~", "~0").replace("/", "~1")


def _yes(q):
    return True


def _accepts_text(d: F.CharDFA, text: str) -> bool:
    return d.accepts(text)


def compile_schema(schema: Any, separators=(", ", ": "), max_depth: int = DEFAULT_DEPTH,
                   max_states: int = F.DEFAULT_MAX_STATES, whitespace: bool = False,
                   any_order: bool = False) -> F.CharDFA:
    """Character DFA of the accepted JSON texts (see the module docstring).

    Raises:
        ValueError: an unsupported keyword (named, with its JSON pointer path), an invalid
            keyword value, or an automaton over ``max_states``.
    """
    if not (isinstance(separators, (tuple, list)) and len(separators) == 2):
        raise ValueError("json_schema: separators must be a pair (item_sep, key_sep)")
    item_sep, key_sep = separators
    if not (isinstance(item_sep, str) and re.fullmatch(r" *, *", item_sep)):
        raise ValueError(f"json_schema: item separator must be ',' padded with spaces, got {item_sep!r}")
    if not (isinstance(key_sep, str) and re.fullmatch(r" *: *", key_sep)):
        raise ValueError(f"json_schema: key separator must be ':' padded with spaces, got {key_sep!r}")
    comp = _Compiler(schema, (item_sep, key_sep), max_depth, max_states, whitespace, any_order)
    slots = comp.compile(schema, "", max_depth, True)
    node = F.alt(*[slots[t] for t in SLOTS])
    if whitespace:
        node = F.cat(_ws_node(True), node, _ws_node(True))
    dfa = F.compile_dfa(node, max_states, "json_schema")
    if dfa.is_empty():
        raise ValueError("json_schema: the schema accepts no document (in canonical form, "
                         f"nested at most max_depth={max_depth} deep)")
    return dfa


def reorder(doc: Any, schema: Any, root: Any = None, _depth: int = 0, _comp=None) -> Any:
    """``doc`` with object members in the canonical order of ``schema``: the members
    declared by its in-place subschemas first (``properties``, ``required``,
    ``dependentRequired`` of the schema, then of its ``$ref``/``allOf``/``anyOf``/``oneOf``/
    ``if``/``then``/``else``/``dependentSchemas`` parts, in that order), then the other
    members in their order; recursively. Used to serialise documents for checks."""
    root = schema if root is None else root
    comp = _comp
    if comp is None:
        comp = _Compiler.__new__(_Compiler)
        comp.root, comp.anchors, comp.dyn_anchors, comp.ids, comp.base_of = root, {}, {}, {}, {}
        comp._index(root, "")
    if _depth > 64 or not isinstance(schema, dict) or not isinstance(doc, (dict, list)):
        return doc
    pieces = comp.inplace_pieces(schema)
    if isinstance(doc, dict):
        names = comp.inplace_names(schema)
        keys = [k for k in names if k in doc] + [k for k in doc if k not in names]
        return {k: reorder(doc[k], {"allOf": [m for x in pieces for m in _member_schemas(x, k)]}
                           if pieces else True, root, _depth + 1, comp) for k in keys}
    out = []
    for i, v in enumerate(doc):
        subs = []
        for x in pieces:
            prefix = x.get("prefixItems")
            if isinstance(prefix, list) and i < len(prefix):
                subs.append(prefix[i])
            elif isinstance(x.get("items"), (dict, bool)):
                subs.append(x["items"])
        out.append(reorder(v, {"allOf": subs} if subs else True, root, _depth + 1, comp))
    return out


def _member_schemas(x: dict, k: str) -> list:
    """The schemas of ``x`` that apply to member ``k`` (patterns by Python's ``re``: only
    the member order depends on it)."""
    props = x.get("properties")
    if isinstance(props, dict) and k in props:
        out = [props[k]]
    else:
        out = []
    pp = x.get("patternProperties")
    if isinstance(pp, dict):
        for p, sub in pp.items():
            try:
                if re.search(p, k):
                    out.append(sub)
            except (re.error, TypeError):
                pass
    if not out and "additionalProperties" in x and not (isinstance(props, dict) and k in props):
        out.append(x["additionalProperties"])
    return [m for m in out if isinstance(m, dict)]
