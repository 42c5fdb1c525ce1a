"""dependentSchemas, unevaluatedProperties, unevaluatedItems, $dynamicRef/$dynamicAnchor.

Each case lists documents with their validity (checked against the ``jsonschema``
validator when it is installed); a valid one must be accepted in canonical form and an
invalid one never. Each schema is also checked under ``not``, where the compilation is a
superset: there a valid document must be rejected (the exactness of the complement).
"""

from __future__ import annotations

import pytest

from ppl.stdlib import constraints as C

DEP = {"properties": {"a": {"type": "integer"}, "b": {}},
       "dependentSchemas": {"a": {"required": ["b"], "properties": {"b": {"type": "string"}}}}}
UNEV_PROPS = {"properties": {"a": {"type": "integer"}},
              "patternProperties": {"^x": {"type": "boolean"}},
              "allOf": [{"properties": {"b": {"type": "string"}}}],
              "$ref": "#/$defs/c",
              "$defs": {"c": {"properties": {"c": {"type": "null"}}}},
              "unevaluatedProperties": False}
UNEV_IF = {"properties": {"kind": {"enum": ["p", "q"]}},
           "required": ["kind"],
           "if": {"properties": {"kind": {"const": "p"}}},
           "then": {"properties": {"p": {"type": "integer"}}},
           "else": {"properties": {"q": {"type": "integer"}}},
           "unevaluatedProperties": {"type": "string"}}
UNEV_ANY = {"anyOf": [{"properties": {"r": {"type": "integer"}}, "required": ["r"]},
                      {"properties": {"s": True}, "required": ["s"]}],
            "unevaluatedProperties": False}
UNEV_ITEMS = {"prefixItems": [{"type": "integer"}],
              "allOf": [{"prefixItems": [True, {"type": "string"}]}],
              "contains": {"type": "null"},
              "unevaluatedItems": {"type": "boolean"}}
DYN = {"$id": "https://example.com/root",
       "$ref": "list",
       "$defs": {"item": {"$dynamicAnchor": "item", "type": "integer"},
                 "list": {"$id": "list", "type": "array", "items": {"$dynamicRef": "#item"},
                          "$defs": {"default": {"$dynamicAnchor": "item"}}}}}
TREE = {"$id": "https://example.com/tree",
        "$dynamicAnchor": "node",
        "type": "object",
        "properties": {"v": {"type": "integer"},
                       "kids": {"type": "array", "items": {"$dynamicRef": "#node"}}},
        "required": ["v"],
        "unevaluatedProperties": False}

CASES = {
    "dependentSchemas": (DEP, [({}, True), ({"b": 1}, True), ({"a": 1, "b": "x"}, True),
                               ({"a": 1}, False), ({"a": 1, "b": 2}, False),
                               ({"a": "x", "b": "y"}, False), (3, True)]),
    "unevaluatedProperties": (UNEV_PROPS, [({}, True), ({"a": 1, "x1": True, "b": "s", "c": None}, True),
                                           ({"xyz": False}, True), ({"d": 1}, False),
                                           ({"a": 1, "d": None}, False), ({"b": 1}, False),
                                           ({"x": 1}, False), ("str", True)]),
    "unevaluatedProperties if": (UNEV_IF, [
        ({"kind": "p", "p": 1}, True), ({"kind": "q", "q": 1}, True),
        ({"kind": "p", "q": 1}, False), ({"kind": "p", "q": "s"}, True),
        ({"kind": "q", "p": 1}, False), ({"kind": "p", "t": 5}, False),
        ({"kind": "p", "t": "ok"}, True)]),
    "unevaluatedProperties anyOf": (UNEV_ANY, [
        ({"r": 1}, True), ({"s": 1}, True), ({"r": 1, "s": 2}, True), ({"r": "x", "s": 2}, False),
        ({"s": 1, "t": 2}, False), ({}, False), ({"r": 1, "t": 0}, False)]),
    "unevaluatedItems": (UNEV_ITEMS, [([1, "s", None], True), ([1, "s", None, True, None], True),
                                      ([1, "s", None, 3], False), ([None], False),
                                      ([1, 2, None], False), ([1, "s", False], False)]),
    "$dynamicRef": (DYN, [([1, 2], True), ([], True), ([1, "x"], False), (["x"], False)]),
    "$dynamicRef recursion": (TREE, [({"v": 1}, True), ({"v": 1, "kids": [{"v": 2}]}, True),
                                     ({"v": 1, "kids": [{"v": 2, "w": 1}]}, False),
                                     ({"v": 1, "kids": [{"w": 2}]}, False),
                                     ({"v": 1, "w": 3}, False)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_new_keywords_exact(name):
    schema, docs = CASES[name]
    jsonschema = None
    try:
        import jsonschema
    except ImportError:
        pass
    c = C.json_schema(schema)
    # (the $dynamicRef schemas are resources with an $id: not wrapped)
    neg = None if "$id" in schema else C.json_schema({"not": schema, "$defs": schema.get("$defs", {})})
    for doc, valid in docs:
        if jsonschema is not None:
            assert jsonschema.Draft202012Validator(schema).is_valid(doc) == valid, doc
        text = c.canonical(doc)
        assert c.accepts(text) == valid, (text, valid)
        if neg is not None:
            assert neg.accepts(neg.canonical(doc)) != valid, (doc, valid)


def test_dynamic_ref_outermost_anchor_wins():
    # the same generic list, its item type overridden by the outermost resource
    strings = {**DYN, "$id": "https://example.com/strings",
               "$defs": {**DYN["$defs"], "item": {"$dynamicAnchor": "item", "type": "string"}}}
    c = C.json_schema(strings)
    assert c.accepts('["a", "b"]') and not c.accepts("[1]")
    # without the bookend $dynamicAnchor in `list`, the reference is a plain $ref
    plain = {**DYN, "$defs": {**DYN["$defs"], "list": {**DYN["$defs"]["list"],
                                                       "$defs": {"default": {"$anchor": "item"}}}}}
    p = C.json_schema(plain)
    assert p.accepts('[1, "x", null]')


def test_dynamic_ref_recursion_unrolled_to_max_depth():
    deep = {"v": 1, "kids": [{"v": 2, "kids": [{"v": 3}]}]}
    c = C.json_schema(TREE, max_depth=3)
    assert not c.accepts(c.canonical(deep))  # 5 levels: beyond max_depth (never invalid)
    c5 = C.json_schema(TREE, max_depth=5)
    assert c5.accepts(c5.canonical(deep))


def test_canonical_order_shared_by_in_place_parts():
    s = {"properties": {"a": {"type": "integer"}}, "allOf": [{"properties": {"b": {"type": "integer"}}}],
         "required": ["b"]}
    c = C.json_schema(s)
    assert c.canonical({"b": 2, "a": 1}) == '{"a": 1, "b": 2}'
    assert c.accepts('{"a": 1, "b": 2}') and not c.accepts('{"a": 1}')


def test_required_name_obeys_additional_properties():
    # a required name outside properties is an additional member
    c = C.json_schema({"required": ["a"], "additionalProperties": {"type": "integer"}})
    assert c.accepts('{"a": 1}') and not c.accepts('{"a": "x"}')


@pytest.mark.parametrize(
    "schema,fragment",
    [
        ({"anyOf": [{"properties": {f"p{i}": True}} for i in range(7)], "unevaluatedProperties": False},
         "'unevaluatedProperties': more than 64 evaluation cases"),
        ({"anyOf": [{"$ref": "#"}, {"type": "array"}], "unevaluatedItems": False},
         "'unevaluatedItems' through a reference cycle"),
        ({"$dynamicRef": 3}, "'$dynamicRef' must be a string"),
        ({"dependentSchemas": []}, "'dependentSchemas' must be an object"),
    ],
)
def test_refusals_name_keyword(schema, fragment):
    with pytest.raises(ValueError) as info:
        C.json_schema(schema)
    assert fragment in str(info.value), str(info.value)
