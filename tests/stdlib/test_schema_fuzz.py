"""Fuzzing JSON Schema compilation against the ``jsonschema`` validator (cheap: few examples).

* Soundness on generated schemas: for hypothesis-generated schemas (combinators over numeric,
  string, array and object keywords, dependentSchemas, unevaluatedProperties/Items) and generated JSON values, whatever the constraint
  accepts in canonical form must be valid (an invalid document accepted is the worst outcome).
* Completeness where the compilation is exact: instances that ``hypothesis-jsonschema``
  generates for a schema are accepted in canonical form; instances of ``{"not": schema}``
  never are.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from ppl.stdlib import constraints as C

jsonschema = pytest.importorskip("jsonschema")
hjs = pytest.importorskip("hypothesis_jsonschema")

_leaf = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["integer", "number"])},
                          optional={"minimum": st.integers(-5, 5), "exclusiveMaximum": st.integers(-5, 9),
                                    "multipleOf": st.sampled_from([1, 2, 3, 0.5])}),
    st.fixed_dictionaries({"type": st.just("string")},
                          optional={"minLength": st.integers(0, 2), "maxLength": st.integers(0, 3),
                                    "pattern": st.sampled_from(["^a", "b$", "[0-9]", "^\\S+$"])}),
    st.fixed_dictionaries({}, optional={"enum": st.lists(st.one_of(st.integers(-2, 2), st.sampled_from(["a", "b"]),
                                                                   st.none(), st.booleans()),
                                                         min_size=1, max_size=3)}),
)


def _schemas():
    return st.recursive(_leaf, lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=2).map(lambda xs: {"anyOf": xs}),
        st.lists(inner, min_size=1, max_size=2).map(lambda xs: {"oneOf": xs}),
        st.lists(inner, min_size=1, max_size=2).map(lambda xs: {"allOf": xs}),
        inner.map(lambda x: {"not": x}),
        st.tuples(inner, st.integers(0, 2)).map(lambda t: {"type": "array", "items": t[0], "maxItems": t[1]}),
        st.tuples(inner, st.booleans()).map(lambda t: {"type": "object", "properties": {"k": t[0]},
                                                       "required": ["k"] if t[1] else []}),
        st.tuples(inner, inner).map(lambda t: {"properties": {"k": t[0]}, "dependentSchemas": {"x": t[1]}}),
        st.tuples(inner, st.one_of(inner, st.booleans())).map(
            lambda t: {"anyOf": [{"properties": {"k": t[0]}}, {"properties": {"x": True}}],
                       "unevaluatedProperties": t[1]}),
        st.tuples(inner, st.one_of(inner, st.booleans())).map(
            lambda t: {"allOf": [{"prefixItems": [t[0]]}], "unevaluatedItems": t[1]}),
    ), max_leaves=4)


_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-6, 10), st.sampled_from([0.5, 1.0, 2.5, -0.0]),
              st.text("ab0 ", max_size=3)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["k", "x"]), inner, max_size=2)),
    max_leaves=5)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(_schemas(), st.lists(_values, min_size=15, max_size=15))
def test_generated_schemas_never_accept_invalid(schema, docs):
    try:
        c = C.json_schema(schema)
    except ValueError:
        return  # refused (unsupported, empty or too large): never a wrong answer
    validator = jsonschema.Draft202012Validator(schema)
    for doc in docs:
        if c.accepts(c.canonical(doc)):
            assert validator.is_valid(doc), (schema, doc)


# (hypothesis-jsonschema 0.23.1 fails generating objects under hypothesis 6.170: it uses
# an internal API that moved; objects are covered by the suite ratchet and the test above)
SCHEMAS = [
    {"type": "integer", "minimum": -20, "exclusiveMaximum": 50, "multipleOf": 4},
    {"type": "array", "items": {"enum": ["x", 1, None]}, "minItems": 1, "maxItems": 3},
    {"oneOf": [{"type": "integer", "multipleOf": 3}, {"type": "string", "pattern": "^a+$"}]},
]


def _plain(doc) -> bool:
    """No exponent-form numbers and no NaN: the canonical universe."""
    text = json.dumps(doc)
    return "e" not in text.replace('"', " ").split('"')[0] and "Infinity" not in text and "NaN" not in text


@pytest.mark.parametrize("schema", SCHEMAS, ids=["integer", "array", "oneOf"])
def test_generated_instances(schema):
    c = C.json_schema(schema)
    neg = {"not": schema}

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(hjs.from_schema(schema), hjs.from_schema(neg))
    def check(valid, invalid):
        if _plain(valid) and not any(isinstance(v, float) and "e" in repr(v) for v in _leaves(valid)):
            assert c.accepts(c.canonical(valid)), valid
        assert not c.accepts(c.canonical(invalid)), invalid

    check()


def _leaves(doc):
    if isinstance(doc, dict):
        for v in doc.values():
            yield from _leaves(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _leaves(v)
    else:
        yield doc
