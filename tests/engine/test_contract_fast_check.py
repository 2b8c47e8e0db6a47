"""The compiled fast check may only ever say "valid" where jsonschema says valid: property-tested
over random schemas built from the keywords it is trusted with, and random JSON values."""

import jsonschema
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from workflows_admin.engine import Contract
from workflows_admin.engine.contracts import compile_fast_check

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(-5, 5, allow_nan=False)
    | st.sampled_from(["", "a", "a\n", "ab", "b1"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(["a", "b", "c"]), children, max_size=3)
    ),
    max_leaves=12,
)
types = st.sampled_from(["null", "boolean", "integer", "number", "string", "array", "object"])
value_keywords = st.fixed_dictionaries(
    {},
    optional={
        "type": types | st.lists(types, min_size=1, max_size=3, unique=True),
        "enum": st.lists(json_values, min_size=1, max_size=3),
        "const": json_values,
        "minLength": st.integers(0, 2),
        "maxLength": st.integers(0, 2),
        "pattern": st.sampled_from(["^a$", "a", "^[ab]+$", "1$"]),
        "minimum": st.integers(-2, 2) | st.floats(-2, 2),
        "exclusiveMaximum": st.integers(-2, 2),
        "minItems": st.integers(0, 2),
        "maxItems": st.integers(0, 3),
        "uniqueItems": st.booleans(),
        "required": st.lists(st.sampled_from(["a", "b", "c"]), max_size=2, unique=True),
        "maxProperties": st.integers(0, 2),
        "format": st.sampled_from(["email", "date-time"]),
    },
)
schemas = st.recursive(
    value_keywords,
    lambda children: st.builds(
        lambda base, nested: {**base, **nested},
        value_keywords,
        st.fixed_dictionaries(
            {},
            optional={
                "properties": st.dictionaries(st.sampled_from(["a", "b", "c"]), children, max_size=2),
                "additionalProperties": st.booleans() | children,
                "items": children,
                "contains": children,
                "propertyNames": children,
                "allOf": st.lists(children, min_size=1, max_size=2),
                "anyOf": st.lists(children, min_size=1, max_size=2),
            },
        ),
    ),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None)
@given(schema=schemas, values=st.lists(json_values, min_size=1, max_size=8))
def test_the_fast_check_never_accepts_what_jsonschema_refuses(schema, values):
    accepts = compile_fast_check(schema)
    # Built only from trusted keywords; fastjsonschema still refuses to compile a few unsatisfiable
    # ones ("required" names a property additionalProperties forbids), which jsonschema then judges.
    assume(accepts is not None)
    reference = jsonschema.Draft202012Validator(schema)
    for value in values:
        if accepts(value):
            assert reference.is_valid(value), (schema, value)


@pytest.mark.parametrize(
    "schema",
    [
        {"not": {"pattern": "^a$"}},
        {"oneOf": [{"type": "string"}, {"pattern": "a"}]},
        {"if": {"pattern": "^a$"}, "then": {"type": "integer"}},
        {"patternProperties": {"^a$": {"type": "integer"}}},
        {"multipleOf": 0.1},
        {"prefixItems": [{"type": "string"}]},
        {"items": [{"type": "string"}]},
        {"$defs": {"s": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/s"}}},
        {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"},
    ],
)
def test_schemas_the_fast_check_cannot_be_trusted_with_go_to_jsonschema_alone(schema):
    assert compile_fast_check(schema) is None


def test_a_contract_rejected_by_the_fast_check_still_reports_every_error_from_jsonschema():
    contract = Contract(
        schema={"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["a"]}
    )
    assert contract._accepts is not None
    assert contract.errors({"a": 1, "b": "x"}) == []
    assert contract.errors({"a": 1.0}) == []  # 1.0 is an integer to JSON Schema
    assert contract.errors({"a": True, "b": 2}) == ["a: True is not of type 'integer'", "b: 2 is not of type 'string'"]
    assert contract.errors({}) == ["(root): 'a' is a required property"]
