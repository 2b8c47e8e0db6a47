"""The version diff and the round-trip check, on hand-made version pairs (no database)."""

from workflows_admin.engine import Contract, Workflow
from workflows_admin.engine.diff import ADDITIVE, BREAKING, COMPATIBLE, diff_versions, shape_changes, version_shape
from workflows_admin.engine.planning import plan_migration
from workflows_admin.engine.verification import check_sample


def _noop(ctx):
    return ctx


def _workflow(name, steps_a, steps_b, *, contract_a=None, contract_b=None, step_map=None, back_map=None):
    workflow = Workflow(name)
    a = workflow.version("1.0.0", contract=contract_a or Contract())
    b = workflow.version("2.0.0", contract=contract_b or Contract())
    for step in steps_a:
        a.add_step(step, _noop)
    for step in steps_b:
        b.add_step(step, _noop)
    workflow.migration("1.0.0", "2.0.0", step_map=step_map)(lambda c: c)
    if back_map is not None:
        workflow.migration("2.0.0", "1.0.0", step_map=back_map)(lambda c: c)
    workflow.check()
    return workflow


def _kinds(diff):
    return {(c.kind, c.subject): c.classification for c in diff.changes}


def test_a_rename_through_the_step_map_is_compatible():
    workflow = _workflow("rename", ["fetch", "enrich"], ["fetch", "augment"], step_map={"enrich": "augment"})
    diff = diff_versions(workflow, "1.0.0", "2.0.0")
    assert _kinds(diff) == {("step_renamed", "enrich"): COMPATIBLE}
    assert diff.classification == COMPATIBLE
    assert [s.as_dict() for s in diff.affected_steps] == [
        {"step": "enrich", "change": "renamed", "destination": "augment"}
    ]
    assert diff.forward_path == ["1.0.0", "2.0.0"] and diff.back_path is None


def test_a_removed_step_is_breaking_and_names_where_the_step_map_sends_its_instances():
    workflow = _workflow(
        "removed", ["analyze", "enrich", "summarize"], ["analyze", "summarize"], step_map={"enrich": "summarize"}
    )
    diff = diff_versions(workflow, "1.0.0", "2.0.0")
    assert _kinds(diff) == {("step_removed", "enrich"): BREAKING}
    assert diff.classification == BREAKING
    assert diff.affected_steps[0].as_dict() == {"step": "enrich", "change": "removed", "destination": "summarize"}


def test_a_tightened_contract_is_breaking():
    either = {"n": {"type": ["integer", "string"]}}
    loose = Contract(required=("topic",), schema={"type": "object", "properties": either})
    tight = Contract(
        required=("topic", "sources"), schema={"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}
    )
    workflow = _workflow("tight", ["a"], ["a"], contract_a=loose, contract_b=tight)
    diff = diff_versions(workflow, "1.0.0", "2.0.0")
    details = {c.detail: c.classification for c in diff.changes}
    assert details == {
        "required field 'sources' added": BREAKING,
        "n: type integer or string -> integer": BREAKING,
        "n: minimum added (0)": BREAKING,
    }
    assert diff.classification == BREAKING
    # The other way it is loosened: compatible.
    back = _workflow("loose", ["a"], ["a"], contract_a=tight, contract_b=loose)
    assert diff_versions(back, "1.0.0", "2.0.0").classification == COMPATIBLE


def test_an_added_optional_field_and_an_added_step_are_additive():
    before = Contract(schema={"type": "object", "properties": {"topic": {"type": "string"}}})
    text = {"type": "string"}
    after = Contract(schema={"type": "object", "properties": {"topic": text, "notes": text}})
    workflow = _workflow("additive", ["a", "b"], ["a", "b", "c"], contract_a=before, contract_b=after)
    diff = diff_versions(workflow, "1.0.0", "2.0.0")
    assert _kinds(diff) == {("contract", "notes"): ADDITIVE, ("step_added", "c"): ADDITIVE}
    assert diff.classification == ADDITIVE and diff.affected_steps == []


def test_reordered_steps_and_a_missing_path_are_breaking():
    workflow = Workflow("reorder")
    a, b = workflow.version("1.0.0"), workflow.version("2.0.0")
    for step in ("x", "y", "z"):
        a.add_step(step, _noop)
    for step in ("x", "z", "y"):
        b.add_step(step, _noop)
    workflow.check()
    diff = diff_versions(workflow, "1.0.0", "2.0.0")
    assert {c.kind for c in diff.changes} == {"steps_reordered", "path"}
    assert diff.classification == BREAKING and diff.forward_path is None


def test_the_demo_versions():
    from workflows_admin.demo.research_agent import research_agent

    diff = diff_versions(research_agent, "1.0.0", "2.0.0")
    assert ("step_added", "enrich") in _kinds(diff)
    assert ("contract", "enriched_text") in _kinds(diff)
    assert diff.classification == BREAKING  # enriched_text and sources become required
    assert diff.back_path == ["2.0.0", "1.0.0"]


def test_shape_changes_watch_steps_and_contract_not_step_versions_or_patches():
    workflow = _workflow("shape", ["a", "b"], ["a", "b"])
    old = version_shape(workflow.get_version("1.0.0"))
    assert shape_changes(old, {**old, "patches": ["p"]}) == []
    assert shape_changes(old, {**old, "steps": [{"name": "a", "step_version": "1.1.0"}, old["steps"][1]]}) == []
    changed = shape_changes(old, {**old, "steps": old["steps"][:1]})
    assert [c.detail for c in changed] == ["step 'b' removed"]
    assert [c.kind for c in shape_changes(old, {**old, "contract": {"required": ["n"]}})] == ["contract"]


def test_the_round_trip_must_restore_the_context_exactly():
    workflow = Workflow("trip")
    for label in ("1.0.0", "2.0.0"):
        workflow.version(label).add_step("a", _noop)
    workflow.migration("1.0.0", "2.0.0")(lambda c: {**c, "n": float(c["n"]), "added": True})
    workflow.migration("2.0.0", "1.0.0")(lambda c: {k: v for k, v in c.items() if k != "added"})
    workflow.check()
    forward, back = plan_migration(workflow, "1.0.0", "2.0.0"), plan_migration(workflow, "2.0.0", "1.0.0")
    outcome = check_sample(forward, back, {"n": 1}, "a")  # 1 came back as 1.0: equal in Python, not stored alike
    assert outcome.cause == "round trip 1.0.0 -> 2.0.0 -> 1.0.0: context not restored"
    assert outcome.diff["changed"] == {"n": {"before": 1, "after": 1.0}}
    assert check_sample(forward, back, {"n": 1.5}, "a").cause is None
    assert check_sample(forward, None, {"n": 1}, "a").cause is None  # no path back: forward only
    assert check_sample(forward, back, {}, "a").cause == "forward: migrator 1.0.0->2.0.0 raised KeyError"


def test_the_diff_says_what_each_hop_of_the_forward_path_does():
    from workflows_admin.demo.research_agent import research_agent

    diff = diff_versions(research_agent, "1.0.0", "2.1.0").as_dict()
    assert diff["operations"]["1.0.0->2.0.0"] == [
        "rename raw_text to enriched_text",
        "add sources = [] where it is missing",
    ]
    assert diff_versions(research_agent, "2.0.0", "1.0.0").as_dict()["operations"] == {"2.0.0->1.0.0": None}
