"""The context query grammar and the step-map override, in the engine alone (no database)."""

import pytest

from workflows_admin.engine import StepMapError, plan_migration
from workflows_admin.engine.queries import ContextQuery, QueryError, parse_query

from ..workflows_for_tests import toy


@pytest.mark.parametrize(
    "text, query",
    [
        ('model_config.style = "shout"', ContextQuery("eq", ("model_config", "style"), "shout")),
        ("a.b=3", ContextQuery("eq", ("a", "b"), 3)),
        ("flag = null", ContextQuery("eq", ("flag",), None)),
        ("has sources", ContextQuery("has", ("sources",))),
        ('has "odd key".x', ContextQuery("has", ("odd key", "x"))),
        ('sources contains ["a"]', ContextQuery("contains", ("sources",), ["a"])),
        ('sources @> ["a"]', ContextQuery("contains", ("sources",), ["a"])),
        ('{"model_config": {"style": "shout"}}', ContextQuery("contains", (), {"model_config": {"style": "shout"}})),
        ('"has" = 1', ContextQuery("eq", ("has",), 1)),
    ],
)
def test_a_clause_parses_and_its_canonical_text_parses_back(text, query):
    assert parse_query(text) == query
    assert parse_query(query.text()) == query


def test_a_query_nests_its_value_along_the_path_for_containment():
    assert parse_query('a.b = "x"').nested() == {"a": {"b": "x"}}


@pytest.mark.parametrize(
    "text, words",
    [
        ("style = shout", 'strings are quoted: "shout"'),
        ("style =", "is missing"),
        ("has", "expected =, contains or @>"),
        ("a >= 3", "expected =, contains or @>"),
        ("x = NaN", "NaN"),
        ('x = "\\u0000"', "NUL"),
        ('x = "\\ud800"', "surrogate"),
        ("x = 1 OR 1=1", "unexpected 'OR 1=1'"),
        ("x = 1; DROP TABLE y", "unexpected"),
        ("'a' = 1", "expected a key"),
        ("[1]", "expected a key"),
        ("", "empty"),
        ("a" * 3000 + " = 1", "at most"),
        (".".join("k" * 21) + " = 1", "at most 20 keys"),
    ],
)
def test_anything_outside_the_grammar_is_refused_saying_what(text, words):
    with pytest.raises(QueryError) as error:
        parse_query(text)
    assert words in str(error.value)


def test_a_non_string_clause_is_refused():
    with pytest.raises(QueryError):
        parse_query(["x = 1"])


def test_an_override_changes_where_a_source_step_resumes_and_is_described():
    toy.check()
    plan = plan_migration(toy, "1.0.0", "2.0.0", {"second": "middle", "first": "first"})
    assert plan.step_map == {"first": "first", "second": "middle"}
    assert plan.step_map_override == {"second": "middle"}  # "first" is what the migration says anyway
    assert plan.describe()["step_map_override"] == {"second": "middle"}
    assert plan.apply({"n": 1}, "second")[1] == "middle"
    assert plan_migration(toy, "1.0.0", "2.0.0").apply({"n": 1}, "second")[1] == "second"


@pytest.mark.parametrize(
    "override, words",
    [
        ({"middle": "first"}, "'middle', which is not a step of 1.0.0"),
        ({"second": "third"}, "'third', which is not a step of 2.0.0"),
        ({"second": 3}, "step names"),
    ],
)
def test_an_override_naming_an_unknown_step_is_refused(override, words):
    toy.check()
    with pytest.raises(StepMapError) as error:
        plan_migration(toy, "1.0.0", "2.0.0", override)
    assert words in str(error.value) and error.value.field == "step_map"
