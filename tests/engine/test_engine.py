"""The pure-Python core, without Django or a database."""

import pytest

from workflows_admin.demo.research_agent import research_agent
from workflows_admin.engine import (
    Contract,
    InvalidVersion,
    PlanningError,
    RegistrationError,
    Registry,
    StepContext,
    Version,
    Wait,
    Workflow,
    dry_run,
    plan_migration,
)
from workflows_admin.engine.routing import choose_version, ramp_bucket


def test_versions_compare_as_versions_not_strings():
    assert Version.parse("1.10.0") > Version.parse("1.9.0")
    assert Version.parse("2.0.0-rc.1") < Version.parse("2.0.0")
    assert Version.parse("2.0.0-alpha") < Version.parse("2.0.0-alpha.1") < Version.parse("2.0.0-beta")
    assert Version.parse("2.0.0-rc.2") < Version.parse("2.0.0-rc.10")
    assert str(Version.parse("1.2.3-rc.1+build.5")) == "1.2.3-rc.1"
    assert sorted(map(Version.parse, ["1.0.10", "1.0.2", "0.9.0"])) == list(
        map(Version.parse, ["0.9.0", "1.0.2", "1.0.10"])
    )


@pytest.mark.parametrize("text", ["1.0", "v1.0.0", "01.0.0", "1.0.0.0", "", "latest", "1.0.0-"])
def test_bad_version_strings_are_refused(text):
    with pytest.raises(InvalidVersion, match="not a semantic version"):
        Version.parse(text)


def test_registration_errors_name_the_problem():
    wf = Workflow("w")
    v1 = wf.version("1.0.0")
    v1.add_step("a", lambda ctx: ctx)
    with pytest.raises(RegistrationError, match="duplicate step 'a'"):
        v1.add_step("a", lambda ctx: ctx)
    with pytest.raises(RegistrationError, match="duplicate version 1.0.0"):
        wf.version("1.0.0")
    with pytest.raises(RegistrationError, match="not a semantic version"):
        wf.version("one")
    v2 = wf.version("2.0.0")
    v2.add_step("b", lambda ctx: ctx)

    wf.migration("1.0.0", "2.0.0", step_map={"zzz": "b"})(lambda c: c)
    with pytest.raises(RegistrationError, match="unknown step 'zzz' of 1.0.0"):
        Registry().register(wf)
    wf.migrations.clear()

    wf.migration("1.0.0", "2.0.0")(lambda c: c)
    with pytest.raises(RegistrationError, match="step 'a' of 1.0.0 does not exist in 2.0.0"):
        Registry().register(wf)
    wf.migrations.clear()

    wf.migration("1.0.0", "3.0.0")(lambda c: c)
    with pytest.raises(RegistrationError, match="unknown version 3.0.0"):
        Registry().register(wf)


def test_plan_composes_the_path_and_step_map():
    plan = plan_migration(research_agent, "1.0.0", "2.1.0")
    assert plan.path == ["1.0.0", "2.0.0", "2.1.0"]
    assert plan.step_map == {"analyze": "analyze", "summarize": "summarize"}
    context, step = plan.apply({"topic": "t", "raw_text": "hello"}, "summarize")
    assert step == "summarize"
    assert context["enriched_text"] == "hello" and context["sources"] == [] and "model_config" in context
    assert "raw_text" not in context

    back = plan_migration(research_agent, "2.0.0", "1.0.0")
    assert back.step_map["enrich"] == "summarize"


def test_plan_errors_say_what_is_reachable():
    with pytest.raises(PlanningError, match="no migration path from 2.1.0 to 1.0.0.*reach: no other version"):
        plan_migration(research_agent, "2.1.0", "1.0.0")
    with pytest.raises(PlanningError, match="both 2.0.0"):
        plan_migration(research_agent, "2.0.0", "2.0.0")
    with pytest.raises(PlanningError, match="target version 9.0.0 is not a version"):
        plan_migration(research_agent, "1.0.0", "9.0.0")


def test_dry_run_groups_failures_and_never_touches_inputs():
    plan = plan_migration(research_agent, "1.0.0", "2.0.0")
    good = {"topic": "t", "raw_text": "x"}
    broken = {"topic": 5, "raw_text": "x"}  # breaks the 2.0.0 schema (topic must be a string)
    missing = {"topic": "t"}  # nothing to rename
    items = [(1, good, "analyze"), (2, broken, "analyze"), (3, missing, "summarize"), (4, dict(missing), "analyze")]
    report = dry_run(plan, items)
    assert (report.examined, report.would_migrate, report.would_fail) == (4, 1, 3)
    errors = {e["error"]: e for e in report.as_dict()["errors"]}
    missing_field = "migration 1.0.0->2.0.0: rename raw_text -> enriched_text: no field 'raw_text'"
    assert errors[missing_field]["count"] == 2
    assert errors[missing_field]["instances"] == [3, 4]
    assert any("contract of 2.0.0" in e for e in errors)
    assert good == {"topic": "t", "raw_text": "x"}
    assert report.examples[0]["diff"]["added"] == {"enriched_text": "x", "sources": []}
    assert report.examples[0]["diff"]["removed"] == {"raw_text": "x"}


def test_contract_failures_group_by_field_and_rule_with_the_values_as_examples():
    wf = Workflow("grouping")
    wf.version("1.0.0").add_step("a", lambda c: c)
    schema = {
        "type": "object",
        "required": ["enriched_text"],
        "properties": {"sources": {"type": "array", "items": {"type": "string"}}},
    }
    wf.version("2.0.0", schema=schema).add_step("a", lambda c: c)

    @wf.migration("1.0.0", "2.0.0")
    def two_bugs(context):
        i, raw = context["i"], context["raw"]
        if i % 3 == 0:  # bug one: forgets enriched_text and passes the text where a list belongs
            return {"sources": raw}
        if i % 3 == 1:  # bug two: a number among the sources, at a varying position
            return {"enriched_text": raw, "sources": ["a"] * (i % 4) + [i]}
        return {"enriched_text": raw, "sources": [raw]}

    Registry().register(wf)
    items = [(i, {"i": i, "raw": f"text {i}"}, "a") for i in range(30)]
    report = dry_run(plan_migration(wf, "1.0.0", "2.0.0"), items).as_dict()
    assert (report["would_migrate"], report["would_fail"]) == (10, 20)
    groups = {e["error"]: e for e in report["errors"]}
    assert sorted(groups) == [
        "contract of 2.0.0: enriched_text: required; sources: type array",
        "contract of 2.0.0: sources/*: type string",
    ]
    first = groups["contract of 2.0.0: enriched_text: required; sources: type array"]
    assert (first["count"], first["instances"]) == (10, [0, 3, 6, 9, 12])
    assert first["examples"][1] == {
        "instance": 3,
        "message": "result breaks the contract of 2.0.0: (root): 'enriched_text' is a required property; "
        "sources: 'text 3' is not of type 'array'",
    }
    second = groups["contract of 2.0.0: sources/*: type string"]
    assert second["count"] == 10
    assert [e["message"].rsplit(": ", 1)[1] for e in second["examples"][:2]] == [
        "1 is not of type 'string'",
        "4 is not of type 'string'",
    ]


def test_contract_problems_name_field_and_rule():
    contract = Contract(
        required=("a",),
        schema={"type": "object", "properties": {"n": {"minimum": 0}, "kind": {"enum": ["x", "y"]}}},
    )
    problems = contract.problems({"n": -5, "kind": "z"})
    assert [p.cause for p in problems] == ["a: required", "kind: enum", "n: minimum 0"]
    assert [p.message for p in problems] == contract.errors({"n": -5, "kind": "z"})
    assert "-5" in problems[2].message
    assert [p.cause for p in contract.problems([])] == ["(root): type object"]


def test_migrator_returning_a_non_dict_is_a_failure():
    wf = Workflow("w2")
    wf.version("1.0.0").add_step("a", lambda c: c)
    wf.version("1.1.0").add_step("a", lambda c: c)
    wf.migration("1.0.0", "1.1.0")(lambda c: [c])
    Registry().register(wf)
    report = dry_run(plan_migration(wf, "1.0.0", "1.1.0"), [(1, {}, "a")])
    assert report.as_dict()["errors"][0]["error"] == "migrator 1.0.0->1.1.0 returned list"


def test_contract_reports_every_problem():
    contract = Contract(required=("a", "b"), schema={"type": "object", "properties": {"c": {"type": "integer"}}})
    assert contract.errors({"c": "x"}) == [
        "missing required field 'a'",
        "missing required field 'b'",
        "c: 'x' is not of type 'integer'",
    ]
    assert contract.errors([]) == ["context must be a JSON object, got list"]


def test_ramp_routing_is_deterministic_per_key_and_close_to_the_share():
    assert ramp_bucket("w", "key-1") == ramp_bucket("w", "key-1")
    picks = [choose_version("w", "1.0.0", "2.0.0", 20, f"k{i}") for i in range(10_000)]
    share = picks.count("2.0.0") / len(picks)
    assert 0.18 <= share <= 0.22
    assert choose_version("w", "1.0.0", None, 50, "k") == "1.0.0"


def test_wait_is_a_value():
    assert Wait("x") == Wait("x")


def test_versions_declare_the_patches_their_code_checks():
    wf = Workflow("patched")
    wf.patch("p")
    wf.version("1.0.0", patches=("p",)).add_step("a", lambda c: c)
    wf.version("2.0.0").add_step("a", lambda c: c)
    wf.version("3.0.0", patches=("nope",)).add_step("a", lambda c: c)
    with pytest.raises(RegistrationError, match="version 3.0.0 checks patch 'nope', which the workflow does not"):
        Registry().register(wf)
    assert wf.versions[Version.parse("1.0.0")].patches == ("p",)
    with pytest.raises(RegistrationError, match="patches must be a list"):
        wf.version("4.0.0", patches="p")
    # A handler checking a patch its version does not declare fails: the usage counts would miss it.
    ctx = StepContext(
        {}, workflow="patched", version="2.0.0", known_patches=wf.versions[Version.parse("2.0.0")].patches
    )
    with pytest.raises(RegistrationError, match=r"version 2.0.0: declare it .*patches=\('p',\)"):
        ctx.patched("p")


def test_the_demo_declares_its_patch_only_where_its_code_checks_it():
    checks = {str(v): d.patches for v, d in research_agent.versions.items()}
    assert checks == {"1.0.0": (), "2.0.0": ("cite-sources",), "2.1.0": ("cite-sources",)}
