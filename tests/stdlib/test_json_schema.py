"""JSON schema -> regex: valid/invalid documents, canonical form, unsupported keywords."""

from __future__ import annotations

import json

import pytest

from ppl.stdlib import constraints as C

PERSON = {
    "title": "Person",
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 8},
        "age": {"type": "integer"},
        "email": {"type": "string", "pattern": "^[a-z]+@[a-z]+\\.com$"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 2},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": ["string", "null"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "score": {"type": "number"},
        "ok": {"type": "boolean"},
        "kind": {"const": "person"},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}

VALID = [
    {"name": "Ann", "age": 3},
    {"name": "Ann", "age": -30, "email": "ann@x.com"},
    {"name": "Bob", "age": 0, "tags": ["a"], "address": {"city": "Zürich", "zip": None}},
    {"name": "\"q\"\\", "age": 1, "score": -1.5e-3, "ok": False, "kind": "person"},
    {"name": "日本語", "age": 7, "tags": ["b", "a"], "address": {"city": "", "zip": "8001"}},
    {"name": "x", "age": 1, "score": 12},
]

INVALID = [
    {"age": 3},  # name missing
    {"name": "Ann"},  # age missing
    {"name": "", "age": 3},  # minLength
    {"name": "Annabelle!", "age": 3},  # maxLength
    {"name": "Ann", "age": 3.5},  # integer
    {"name": "Ann", "age": 3, "email": "ANN@x.com"},  # pattern
    {"name": "Ann", "age": 3, "tags": []},  # minItems
    {"name": "Ann", "age": 3, "tags": ["a", "b", "a"]},  # maxItems
    {"name": "Ann", "age": 3, "tags": ["c"]},  # enum
    {"name": "Ann", "age": 3, "address": {"zip": "1"}},  # nested required
    {"name": "Ann", "age": 3, "address": {"city": "a", "x": 1}},  # closed object
    {"name": "Ann", "age": 3, "extra": 1},  # closed object
    {"name": "Ann", "age": 3, "ok": "yes"},  # boolean
    {"name": "Ann", "age": 3, "kind": "robot"},  # const
]


@pytest.fixture(scope="module")
def person():
    return C.json_schema(PERSON)


@pytest.mark.parametrize("doc", VALID)
def test_valid_documents_accepted(person, doc):
    text = json.dumps(doc, ensure_ascii=False)
    assert person.check(text), text
    assert person.check(json.dumps(doc)), "\\u escapes are valid JSON string characters"


@pytest.mark.parametrize("doc", INVALID)
def test_invalid_documents_rejected(person, doc):
    assert not person.check(json.dumps(doc, ensure_ascii=False))


def test_canonical_form_only(person):
    doc = {"name": "Ann", "age": 3}
    assert person.check('{"name": "Ann", "age": 3}')
    assert not person.check('{"name":"Ann","age":3}')  # other separators
    assert not person.check('{ "name": "Ann", "age": 3 }')  # extra whitespace
    assert not person.check('{"age": 3, "name": "Ann"}')  # order of properties
    assert not person.check('{"name": "Ann", "age": 03}')  # leading zero
    assert not person.check('{"name": "A\nn", "age": 3}')  # raw control char
    compact = C.json_schema(PERSON, separators=(",", ":"))
    assert compact.check(json.dumps(doc, separators=(",", ":")))
    assert not compact.check(json.dumps(doc))


def test_optional_members_any_subset():
    s = {"type": "object", "properties": {k: {"type": "integer"} for k in "abc"}}
    c = C.json_schema(s)
    import itertools

    for r in range(4):
        for keys in itertools.combinations("abc", r):
            assert c.check(json.dumps({k: 1 for k in keys}))
    assert not c.check('{, "a": 1}') and not c.check('{"a": 1, }')


def test_accepted_text_is_valid_json_on_real_tokens(gpt2):
    """Walks documents through the compiled GPT-2 automaton one byte-token at a time."""
    import numpy as np

    c = C.json_schema(PERSON)
    aut = c.compile(gpt2)
    table, acc = np.asarray(aut.transitions), np.asarray(aut.accepting)
    byte_tok = {}
    for i, b in enumerate(gpt2.token_bytes):
        if len(b) == 1:
            byte_tok[b[0]] = i
    for doc, want in [(d, True) for d in VALID] + [(d, False) for d in INVALID]:
        s = aut.start
        for b in json.dumps(doc, ensure_ascii=False).encode():
            s = table[s, byte_tok[b]]
        assert bool(acc[s]) == want, doc


@pytest.mark.parametrize(
    "schema,fragment",
    [
        ({"$ref": "#/defs/x"}, "does not resolve"),
        ({"$ref": "http://example.com/s.json"}, "outside this schema"),
        ({"type": "object", "$recursiveRef": "#"}, "unsupported keyword '$recursiveRef'"),
        ({"properties": {"a": {"dependencies": {}}}}, "'dependencies' (at /properties/a)"),
        ({"type": "wat"}, "unknown type"),
        ({"type": "string", "minLength": 3, "maxLength": 2}, "exceeds"),
        ({"type": "string", "pattern": "a("}, "position 1"),
        ({"type": "string", "pattern": "(a)\\1"}, "backreferences"),
        ({"type": "string", "maxLength": 5000}, "max_states=4096"),
        (False, "accepts no document"),
    ],
)
def test_unsupported_or_invalid_schema(schema, fragment):
    with pytest.raises(ValueError) as info:
        C.json_schema(schema)
    assert fragment in str(info.value), str(info.value)


def test_annotations_ignored_and_anyof():
    c = C.json_schema({"$schema": "x", "description": "d", "examples": [1],
                       "anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 1}]})
    assert c.check("12") and c.check('"a"') and not c.check('"ab"') and not c.check("1.5")


def test_pattern_search_semantics():
    c = C.json_schema({"type": "string", "pattern": "ab+"})
    assert c.check('"xxabbby"') and c.check('"ab"') and not c.check('"ba"')
    anchored = C.json_schema({"type": "string", "pattern": "^ab+$"})
    assert anchored.check('"abb"') and not anchored.check('"xabb"')
    dot = C.json_schema({"type": "string", "pattern": "^a.c$"})
    assert dot.check('"abc"') and not dot.check('"a"c"')


def test_keywords_exact_numbers_and_combinators():
    rng = C.json_schema({"type": "integer", "minimum": -3, "exclusiveMaximum": 10, "multipleOf": 3})
    for v in range(-8, 15):
        assert rng.accepts(str(v)) == (-3 <= v < 10 and v % 3 == 0), v
    assert not rng.accepts("6.0") and not rng.accepts("6.5")  # integers are written without a fraction
    num = C.json_schema({"type": "number", "exclusiveMinimum": 0.5, "maximum": 2.25, "multipleOf": 0.25})
    for text, want in [("0.5", False), ("0.75", True), ("2.25", True), ("2.5", False),
                       ("1.1", False), ("1", True), ("-1", False)]:
        assert num.accepts(text) == want, text
    one = C.json_schema({"oneOf": [{"type": "integer"}, {"minimum": 2}]})
    assert [one.accepts(x) for x in ["1", "2.5", "3", "1.5", '"s"']] == [True, True, False, False, True]
    neg = C.json_schema({"not": {"enum": [0, "a"]}})
    assert not neg.accepts("0") and not neg.accepts("-0.0") and not neg.accepts('"\\u0061"')
    assert neg.accepts("1") and neg.accepts('"b"') and neg.accepts("null")
    cond = C.json_schema({"if": {"type": "string"}, "then": {"maxLength": 1}, "else": {"type": "null"}})
    assert cond.accepts('"a"') and not cond.accepts('"ab"') and cond.accepts("null") and not cond.accepts("1")


def test_objects_arrays_refs_and_pydantic():
    s = {"$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"},
                                                           "next": {"$ref": "#/$defs/node"}},
                            "required": ["v"], "additionalProperties": False}},
         "$ref": "#/$defs/node"}
    c = C.json_schema(s)
    assert c.accepts('{"v": 1, "next": {"v": 2}}') and not c.accepts('{"next": {"v": 2}}')
    arr = C.json_schema({"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "integer"},
                         "contains": {"const": 7}, "maxContains": 1, "maxItems": 3})
    assert arr.accepts('["a", 7]') and not arr.accepts('["a", 7, 7]') and not arr.accepts('["a", 1]')
    assert not arr.accepts('[7]') and not arr.accepts('["a", 7, 1, 2]')
    pp = C.json_schema({"type": "object", "patternProperties": {"^x": {"type": "integer"}},
                        "additionalProperties": {"type": "string"}, "propertyNames": {"maxLength": 2},
                        "minProperties": 1})
    assert pp.accepts('{"x1": 1, "b": "s"}') and not pp.accepts('{"x1": "s"}')
    assert not pp.accepts('{"abc": "s"}') and not pp.accepts("{}")
    pydantic = pytest.importorskip("pydantic")

    class Item(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=5)
        qty: int = pydantic.Field(ge=1)

    m = C.json_schema(Item)
    assert m.accepts('{"name": "pen", "qty": 2}') and not m.accepts('{"name": "pen", "qty": 0}')
    assert m.canonical({"qty": 2, "name": "pen"}) == '{"name": "pen", "qty": 2}'


def test_whitespace_and_any_order():
    s = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "array", "items": {"type": "null"}}},
         "required": ["a", "b"], "additionalProperties": False}
    strict = C.json_schema(s)
    loose = C.json_schema(s, whitespace=True, any_order=True)
    doc = '{\n  "b": [ null,null ],\n  "a": 1\n}'
    assert loose.accepts(doc) and not strict.accepts(doc)
    assert loose.accepts('{"a": 1, "b": []}') and not loose.accepts('{"a": 1}')


def test_unique_items_exact_for_finite_items():
    c = C.json_schema({"type": "array", "items": {"enum": [1, "a", None]}, "uniqueItems": True})
    assert c.accepts('[1, "a", null]') and c.accepts("[]") and not c.accepts('[1, "a", 1.0]')
    assert not c.accepts('["a", "\\u0061"]')  # equal strings in two spellings
    n = C.json_schema({"not": {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True}})
    assert n.accepts("[true, true]") and not n.accepts("[true, false]") and n.accepts("1")
