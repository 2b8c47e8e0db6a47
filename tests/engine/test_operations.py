"""Declared migrations (rename, default, put, drop) in Python: what they do, and what they refuse."""

import pytest

from workflows_admin.demo.research_agent import research_agent
from workflows_admin.engine import (
    Contract,
    DeclarationError,
    MigrationFailed,
    Operations,
    RegistrationError,
    Workflow,
    default,
    drop,
    dry_run,
    plan_migration,
    put,
    rename,
)


def two_versions(*operations, contract=None):
    workflow = Workflow("declared")
    for label in ("1.0.0", "2.0.0"):
        workflow.version(label, contract=contract if label == "2.0.0" else None).add_step("only", lambda c: c)
    workflow.declare_migration("1.0.0", "2.0.0", *operations)
    workflow.check()
    return plan_migration(workflow, "1.0.0", "2.0.0")


def test_operations_apply_in_order_like_the_function_they_replace():
    plan = two_versions(rename("a", "b"), default("c", [1]), put("d", {"x": None}), drop("e"), default("b", 0))
    result, step = plan.apply({"a": "A", "c": "kept", "e": 1, "f": 2}, "only")
    assert result == {"b": "A", "c": "kept", "d": {"x": None}, "f": 2} and step == "only"
    assert plan.apply({"a": None}, None)[0] == {"b": None, "c": [1], "d": {"x": None}}  # a null is a value


def test_a_declared_value_is_each_contexts_own_copy():
    operations = Operations([default("sources", []), put("config", {"tags": []})])
    first = operations({})
    first["sources"].append("mutated by a step")
    first["config"]["tags"].append("and another")
    assert operations({}) == {"sources": [], "config": {"tags": []}}


def test_renaming_a_missing_field_fails_that_context_naming_the_operation():
    plan = two_versions(rename("raw", "text"))
    with pytest.raises(MigrationFailed) as failed:
        plan.apply({"other": 1}, None)
    assert failed.value.kind == "migration 1.0.0->2.0.0: rename raw -> text: no field 'raw'"
    report = dry_run(plan, [(1, {"raw": "x"}, None), (2, {}, None), (3, {"y": 1}, None)])
    assert (report.would_migrate, report.would_fail) == (1, 2)
    assert [e["count"] for e in report.as_dict()["errors"]] == [2]


def test_the_target_contract_still_judges_a_declared_result():
    plan = two_versions(default("n", "zero"), contract=Contract(schema={"properties": {"n": {"type": "integer"}}}))
    with pytest.raises(MigrationFailed, match="contract of 2.0.0"):
        plan.apply({}, None)
    assert plan.apply({"n": 3}, None)[0] == {"n": 3}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: rename("a", "a"), "to itself does nothing"),
        (lambda: rename("", "a"), "non-empty string"),
        (lambda: drop(3), "non-empty string"),
        (lambda: default("a", object()), "not JSON"),
        (lambda: put("a", float("nan")), "not JSON"),
        (lambda: put("a", {"k": "nul \x00 inside"}), "NUL or a lone surrogate at value/k"),
        (lambda: default("a\ud800", 1), "cannot be stored"),
        (lambda: rename("\ud83d\ude00", "b"), "a surrogate code point; write the character itself"),
    ],
)
def test_an_operation_that_could_never_be_stored_is_refused_when_declared(make, message):
    with pytest.raises(DeclarationError, match=message):
        make()


def test_declared_values_are_stored_json_tuples_become_lists():
    assert put("a", (1, 2)).value == [1, 2]
    assert default("a", {1: "x"}).value == {"1": "x"}


def test_a_migration_declares_operations_and_nothing_else():
    workflow = Workflow("w")
    workflow.version("1.0.0")
    workflow.version("2.0.0")
    with pytest.raises(RegistrationError, match="at least one operation"):
        workflow.declare_migration("1.0.0", "2.0.0")
    with pytest.raises(RegistrationError, match="is not an operation: use rename, default, put or drop"):
        workflow.declare_migration("1.0.0", "2.0.0", lambda c: c)
    workflow.declare_migration("1.0.0", "2.0.0", drop("x"))
    with pytest.raises(RegistrationError, match="duplicate migration"):
        workflow.declare_migration("1.0.0", "2.0.0", drop("y"))


def test_a_plan_says_what_each_declared_hop_does():
    described = plan_migration(research_agent, "1.0.0", "2.1.0").describe()
    assert described["operations"] == {
        "1.0.0->2.0.0": ["rename raw_text to enriched_text", "add sources = [] where it is missing"],
        "2.0.0->2.1.0": [
            'add model_config = {"model": "fake-model", "temperature": 0.0, "style": "plain"} where it is missing'
        ],
    }
    # A function's hop is code: the plan cannot say more than its name.
    assert plan_migration(research_agent, "2.0.0", "1.0.0").describe()["operations"] == {"2.0.0->1.0.0": None}
