"""JSON schema (a regular subset) -> regex over the canonical JSON text.

The regex describes the exact serialised text: separators are fixed (default ``", "`` and
``": "``, Python's ``json.dumps`` default), there is no other whitespace, and object
properties appear in the order the schema lists them. See docs/constraints.md.
"""

from __future__ import annotations

import json
import re
from typing import Any

import interegular

from ppl.stdlib._regex import escape_literal, preprocess

__all__ = ["schema_to_regex", "ANNOTATIONS"]

#: Keywords that carry no constraint and are ignored.
ANNOTATIONS = frozenset(
    {"title", "description", "$schema", "$id", "$comment", "examples", "default",
     "deprecated", "readOnly", "writeOnly"}
)

_BY_TYPE = {
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "minItems", "maxItems"},
    "string": {"minLength", "maxLength", "pattern"},
    "integer": set(),
    "number": set(),
    "boolean": set(),
    "null": set(),
}
_GENERIC = {"type", "enum", "const", "anyOf"}

INTEGER = r"-?(?:0|[1-9][0-9]*)"
NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+\-]?[0-9]+)?"
# One JSON string character: an unescaped char, a short escape, or a \uXXXX escape.
STRING_CHAR = r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})'
# Characters a raw (unescaped) JSON string body may contain.
_SAFE_CHAR = r'[^"\\\x00-\x1f]'


def _fail(path: str, msg: str) -> ValueError:
    return ValueError(f"json_schema: {msg} (at {path or '#'})")


def _json_literal(value: Any, seps) -> str:
    return escape_literal(json.dumps(value, separators=seps, ensure_ascii=False))


def _type_ok(value: Any, t: str) -> bool:
    return {
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "null": value is None,
    }[t]


def _alt(options: list[str]) -> str:
    if not options:
        raise AssertionError("empty alternation")
    return options[0] if len(options) == 1 else "(?:" + "|".join(options) + ")"


def _nonneg_int(schema: dict, kw: str, path: str) -> int | None:
    v = schema.get(kw)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise _fail(path, f"{kw!r} must be a non-negative integer, got {v!r}")
    return v


def _bounds(lo: int | None, hi: int | None, path: str, what: str) -> tuple[int, int | None]:
    lo = lo or 0
    if hi is not None and hi < lo:
        raise _fail(path, f"min{what} {lo} exceeds max{what} {hi}")
    return lo, hi


def _rep(lo: int, hi: int | None) -> str:
    if hi is None:
        return f"{{{lo},}}"
    return f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"


def _pattern_body(pattern: Any, path: str) -> str:
    """Regex of a raw string body for a JSON-Schema ``pattern`` (search semantics).

    The pattern is matched against the raw body (no escapes are generated inside a patterned
    string): ``.`` and negated classes are narrowed to characters that need no escaping, and
    any remaining way for the pattern to produce ``"``, ``\\`` or a control character is an
    error, so every generated string is valid JSON and its value matches the pattern.
    """
    if not isinstance(pattern, str):
        raise _fail(path, f"'pattern' must be a string, got {pattern!r}")
    try:
        core = preprocess(pattern)
    except ValueError as e:
        raise _fail(path, f"bad 'pattern': {e}") from None
    anchored_start = pattern.startswith("^")
    head = pattern[:-1]
    anchored_end = pattern.endswith("$") and (len(head) - len(head.rstrip("\\"))) % 2 == 0
    core = _narrow(core)
    try:
        fsm = interegular.parse_pattern(core).to_fsm()
        bad = interegular.parse_pattern(r'(?s:.*["\\\x00-\x1f].*)').to_fsm()
        unsafe = not (fsm & bad).empty()
    except Exception as e:
        raise _fail(path, f"unsupported 'pattern' {pattern!r}: {e}") from None
    if unsafe:
        raise _fail(path, f"'pattern' {pattern!r} can match '\"', '\\\\' or a control character, "
                    "which would need escaping inside a JSON string; exclude them from the pattern")
    body = "(?:" + core + ")"
    if not anchored_start:
        body = _SAFE_CHAR + "*" + body
    if not anchored_end:
        body = body + _SAFE_CHAR + "*"
    return body


def _narrow(p: str) -> str:
    """Rewrites '.', negated classes and \\S/\\W/\\D outside classes to exclude unsafe chars."""
    out, i, n = [], 0, len(p)
    while i < n:
        c = p[i]
        if c == "\\":
            d = p[i + 1]
            if d in "SWD":
                out.append("[^" + {"S": r"\s", "W": r"\w", "D": r"\d"}[d] + r'"\\\x00-\x1f]')
            else:
                out.append(p[i : i + 2])
            i += 2
        elif c == "[":
            j = i + 1
            neg = j < n and p[j] == "^"
            j += 1 if neg else 0
            start = j
            while j < n and not (p[j] == "]" and j != start):
                j += 2 if p[j] == "\\" else 1
            body = p[i + 1 : j]
            out.append("[" + body + r'"\\\x00-\x1f]' if neg else p[i : j + 1])
            i = j + 1
        elif c == ".":
            out.append(_SAFE_CHAR)
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def schema_to_regex(schema: Any, separators=(", ", ": ")) -> str:
    """Regex matching exactly the canonical serialisations of documents valid under ``schema``.

    Raises:
        ValueError: on any unsupported keyword (named, with its JSON pointer path) or invalid
            keyword value.
    """
    if not (isinstance(separators, (tuple, list)) and len(separators) == 2):
        raise ValueError("json_schema: separators must be a pair (item_sep, key_sep)")
    item_sep, key_sep = separators
    if not (isinstance(item_sep, str) and re.fullmatch(r" *, *", item_sep)):
        raise ValueError(f"json_schema: item separator must be ',' padded with spaces, got {item_sep!r}")
    if not (isinstance(key_sep, str) and re.fullmatch(r" *: *", key_sep)):
        raise ValueError(f"json_schema: key separator must be ':' padded with spaces, got {key_sep!r}")
    seps = (item_sep, key_sep)

    def rx(s: Any, path: str) -> str:
        if s is True:
            raise _fail(path, "the schema 'true' (any JSON value) is not regular; give a type")
        if s is False:
            raise _fail(path, "the schema 'false' accepts nothing")
        if not isinstance(s, dict):
            raise _fail(path, f"a schema must be an object, got {s!r}")
        keys = set(s) - ANNOTATIONS
        types = s.get("type")
        if types is not None:
            tlist = [types] if isinstance(types, str) else types
            if not isinstance(tlist, list) or not tlist:
                raise _fail(path, f"'type' must be a string or a non-empty list, got {types!r}")
            for t in tlist:
                if t not in _BY_TYPE:
                    raise _fail(path, f"unknown type {t!r}")
        else:
            tlist = None
        allowed = set(_GENERIC)
        for t in tlist or _BY_TYPE:
            allowed |= _BY_TYPE[t]
        unknown = sorted(keys - allowed)
        if unknown:
            kw = unknown[0]
            if any(kw in v for v in _BY_TYPE.values()):
                raise _fail(path, f"keyword {kw!r} does not apply to type {types!r}")
            raise _fail(path, f"unsupported keyword {kw!r}")
        if "const" in s or "enum" in s:
            if "const" in s and "enum" in s:
                raise _fail(path, "both 'const' and 'enum' given")
            values = [s["const"]] if "const" in s else s["enum"]
            if not isinstance(values, list) or not values:
                raise _fail(path, f"'enum' must be a non-empty list, got {values!r}")
            extra = keys - {"const", "enum", "type"}
            if extra:
                raise _fail(path, f"keyword {sorted(extra)[0]!r} together with enum/const is not "
                            "supported")
            if tlist is not None:
                values = [v for v in values if any(_type_ok(v, t) for t in tlist)]
                if not values:
                    raise _fail(path, "no enum/const value has the given type")
            for v in values:
                try:
                    json.dumps(v, allow_nan=False)
                except (TypeError, ValueError):
                    raise _fail(path, f"enum/const value {v!r} is not a JSON value (NaN, "
                                "infinities and non-JSON types cannot be generated as JSON)"
                                ) from None
            return _alt([_json_literal(v, seps) for v in values])
        if "anyOf" in s:
            subs = s["anyOf"]
            if keys - {"anyOf"}:
                raise _fail(path, f"keyword {sorted(keys - {'anyOf'})[0]!r} beside 'anyOf' is "
                            "not supported; move it into each branch")
            if not isinstance(subs, list) or not subs:
                raise _fail(path, "'anyOf' must be a non-empty list")
            return _alt([rx(sub, f"{path}/anyOf/{k}") for k, sub in enumerate(subs)])
        if tlist is None:
            raise _fail(path, "a schema needs 'type', 'enum', 'const' or 'anyOf' (an "
                        "unconstrained JSON value is not regular)")
        return _alt([by_type(s, t, path) for t in tlist])

    def by_type(s: dict, t: str, path: str) -> str:
        if t == "null":
            return "null"
        if t == "boolean":
            return "(?:true|false)"
        if t == "integer":
            return INTEGER
        if t == "number":
            return NUMBER
        if t == "string":
            lo, hi = _bounds(_nonneg_int(s, "minLength", path), _nonneg_int(s, "maxLength", path),
                             path, "Length")
            if "pattern" in s:
                if "minLength" in s or "maxLength" in s:
                    raise _fail(path, "'pattern' together with minLength/maxLength is not "
                                "supported")
                return '"' + _pattern_body(s["pattern"], path + "/pattern") + '"'
            if lo == 0 and hi is None:
                return '"' + STRING_CHAR + '*"'
            return '"' + STRING_CHAR + _rep(lo, hi) + '"'
        if t == "array":
            if "items" not in s:
                raise _fail(path, "an array needs 'items' (arbitrary JSON values are not regular)")
            if not isinstance(s["items"], dict):
                raise _fail(path, "'items' must be a single schema (tuple form is not supported)")
            item = rx(s["items"], path + "/items")
            lo, hi = _bounds(_nonneg_int(s, "minItems", path), _nonneg_int(s, "maxItems", path),
                             path, "Items")
            sep = escape_literal(item_sep)
            if hi == 0:
                return r"\[\]"
            more = "(?:" + sep + item + ")" + _rep(max(lo - 1, 0), None if hi is None else hi - 1)
            inner = item + more
            return r"\[" + (inner if lo >= 1 else "(?:" + inner + ")?") + r"\]"
        if t == "object":
            ap = s.get("additionalProperties", False)
            if ap is not False:
                raise _fail(path, "additionalProperties other than false is not supported "
                            "(arbitrary extra members are not regular); objects are closed")
            props = s.get("properties", {})
            if not isinstance(props, dict):
                raise _fail(path, "'properties' must be an object")
            req = s.get("required", [])
            if not isinstance(req, list) or not all(isinstance(r, str) for r in req):
                raise _fail(path, "'required' must be a list of strings")
            missing = [r for r in req if r not in props]
            if missing:
                raise _fail(path, f"required property {missing[0]!r} is not in 'properties'")
            members = [
                (_json_literal(k, seps) + escape_literal(key_sep)
                 + rx(v, f"{path}/properties/{k}"), k in req)
                for k, v in props.items()
            ]
            sep = escape_literal(item_sep)
            # after[i]: members i.. when some member was already written (each needs a sep);
            # first[i]: members i.. when none was written yet. Linear-size construction.
            n = len(members)
            after = [""] * (n + 1)
            for i in range(n - 1, -1, -1):
                m, r = members[i]
                piece = sep + m
                after[i] = (piece if r else "(?:" + piece + ")?") + after[i + 1]
            first_opts = []
            for i, (m, r) in enumerate(members):
                first_opts.append(m + after[i + 1])
                if r:
                    break
            else:
                first_opts.append("")
            body = first_opts[0] if len(first_opts) == 1 else "(?:" + "|".join(first_opts) + ")"
            return r"\{" + body + r"\}"
        raise AssertionError(t)

    return rx(schema, "")
