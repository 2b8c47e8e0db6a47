"""Declared migrations run in SQL by a batch on PostgreSQL: the SQL gives what the Python operations
give, for every context it accepts, and accepts exactly the contexts Python would migrate (of those
whose numbers read back as stored: all the product writes; see declared_sql's docstring); a batch
reads out only the contexts its SQL refused, and those fail (or move) as their dry-run said; its
rollback reads no context and copies each snapshot back in SQL."""

import json

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workflows_admin.engine import Contract, MigrationFailed, MigrationPlan, Workflow, plan_migration
from workflows_admin.engine.operations import Default, Drop, Put, Rename
from workflows_admin.workflows.declared_sql import for_plan
from workflows_admin.workflows.models import BatchItem, WorkflowInstance
from workflows_admin.workflows.runtime import get_registry
from workflows_admin.workflows.services import batches
from workflows_admin.workflows.services.batches import decisions
from workflows_admin.workflows.services.instances import start_workflows

from .helpers import run_batch

pytestmark = pytest.mark.django_db

FIELDS = ("a", "b", "it's", "50%", "back\\slash", "c")  # quotes, placeholders, escapes
text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=6)
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
values = st.recursive(
    scalars | text, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=6
)
field_names = st.sampled_from(FIELDS)
operations = st.lists(
    st.one_of(
        st.tuples(field_names, field_names).filter(lambda pair: pair[0] != pair[1]).map(lambda p: Rename(*p)),
        st.builds(Default, field_names, values),
        st.builds(Put, field_names, values),
        st.builds(Drop, field_names),
    ),
    min_size=1,
    max_size=4,
)
TYPES = ("string", "boolean", "null", "object", "array", "number")
rules = st.sampled_from(TYPES).map(lambda t: {"type": t}) | st.sampled_from(TYPES).map(
    lambda t: {"type": "array", "items": {"type": t}}
)
contracts = st.builds(
    lambda required, in_schema, properties: Contract(
        required=tuple(required), schema={"type": "object", "properties": properties, "required": in_schema}
    ),
    st.lists(field_names, max_size=2, unique=True),
    st.lists(field_names, max_size=2, unique=True),
    st.dictionaries(field_names, rules, max_size=3),
)
contexts = st.dictionaries(field_names, values, max_size=6) | st.lists(values, max_size=2) | scalars


def declared(ops, contract, then=()) -> MigrationPlan:
    """1.0.0 -> 2.0.0 by `ops`, and on to 3.0.0 by `then` if given; the last version has `contract`."""
    labels = ("1.0.0", "2.0.0", "3.0.0") if then else ("1.0.0", "2.0.0")
    workflow = Workflow("declared-property")
    for label in labels:
        workflow.version(label, contract=contract if label == labels[-1] else None).add_step("only", lambda c: c)
    workflow.declare_migration("1.0.0", "2.0.0", *ops)
    if then:
        workflow.declare_migration("2.0.0", "3.0.0", *then)
    workflow.check()
    return plan_migration(workflow, "1.0.0", labels[-1])


def python_result(plan, context):
    try:
        return plan.apply(context, None)[0]
    except MigrationFailed:
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations, then=operations | st.just([]), contract=contracts, context=contexts)
def test_the_sql_accepts_what_python_migrates_and_gives_the_same_context(ops, then, contract, context):
    plan = declared(ops, contract, then)
    sql = for_plan(plan)
    expected = python_result(plan, context)
    if sql is None:  # only when no context could pass: a rename of a field never there, a required one dropped
        assert expected is None
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {sql.accepts('c')}, ({sql.migrated('c')}) = %s::jsonb, ({sql.read('c')})::jsonb = c "
            "FROM (SELECT %s::jsonb AS c) AS stored",
            [json.dumps(expected), json.dumps(context)],
        )
        accepts, same, read_whole = cursor.fetchone()
    # Exactly, for contexts whose numbers read back as they are stored (all the product writes).
    assert accepts == (expected is not None), (sql.accepts("c"), context, expected)
    if accepts:
        assert same, (sql.expression("c"), context, expected)
        assert read_whole is None  # a chunk does not read a context its SQL migrates
    else:
        assert read_whole  # the rest is read whole, for Python


def test_many_fields_and_any_quoting_setting(synced):
    """Over 50 fields touched (a function takes at most 100 arguments), with standard_conforming_strings
    off, where a plain literal would read a backslash as an escape."""
    plan = declared([Put(f"f{n}", f"v\\{n}'") for n in range(60)], Contract(required=("f59",)))
    sql = for_plan(plan)
    expected = python_result(plan, {"kept": 1})
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL standard_conforming_strings = off")
        cursor.execute(
            f"SELECT {sql.accepts('c')}, ({sql.migrated('c')}) = %s::jsonb FROM (SELECT %s::jsonb AS c) AS stored",
            [json.dumps(expected), json.dumps({"kept": 1})],
        )
        assert cursor.fetchone() == (True, True)
    assert expected["f7"] == "v\\7'" and expected["kept"] == 1


def test_a_contract_sql_cannot_say_keeps_the_path_in_python():
    integer = Contract(schema={"properties": {"n": {"type": "integer"}}})
    assert for_plan(declared([Default("n", 0)], integer)) is None
    bounded = Contract(schema={"properties": {"n": {"type": "number", "minimum": 0}}})
    assert for_plan(declared([Default("n", 0)], bounded)) is None
    assert for_plan(declared([Default("n", 0)], Contract(required=("n",)))) is not None
    assert for_plan(declared([Default("n", 0)], Contract(required=("n\x00",)))) is None  # no stored field has it


def test_a_path_through_a_function_stays_in_python(synced):
    research_agent = get_registry().get("research-agent")
    assert for_plan(plan_migration(research_agent, "1.0.0", "2.1.0")) is not None
    assert for_plan(plan_migration(research_agent, "2.0.0", "1.0.0")) is None  # a function migrator


def canonical(context) -> str:
    return json.dumps(json.loads(context) if isinstance(context, str) else context, sort_keys=True)


def contexts_by_id(ids) -> dict[int, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, context::text FROM workflows_workflowinstance WHERE id = ANY(%s)", [list(ids)])
        return dict(cursor.fetchall())


@pytest.mark.parametrize("frozen", [True, False], ids=["previewed", "live"])
def test_a_batch_reads_only_what_its_sql_refused_and_each_ends_as_its_dry_run_said(
    synced, operator, monkeypatch, frozen
):
    transcript = [{"role": "tool", "content": "x" * 3000, "id": 2**65}]  # TOASTed, and an int no float holds
    good = [{"topic": f"t{i}", "raw_text": f"text {i}", "messages": transcript} for i in range(7)]
    kept = {"topic": "k", "raw_text": "r", "sources": ["https://a.example"]}  # its own sources stay
    refused = [{"topic": "no raw text"}, {"topic": 5, "raw_text": "x"}, {"topic": "t", "raw_text": "x", "sources": [1]}]
    instances = start_workflows("research-agent", [*good, kept, *good[:3]], version="1.0.0")
    ids = [instance.pk for instance in instances]
    with connection.cursor() as cursor:  # written by older code, or by hand: they break 1.0.0's contract too
        for instance_id, context in zip(ids[-3:], refused, strict=True):
            cursor.execute(
                "UPDATE workflows_workflowinstance SET context = %s::jsonb WHERE id = %s",
                [json.dumps(context), instance_id],
            )
    before = contexts_by_id(ids)
    read_out = []
    real = MigrationPlan.apply_json
    monkeypatch.setattr(
        MigrationPlan, "apply_json", lambda self, text, step: read_out.append(text) or real(self, text, step)
    )

    token = None
    if frozen:
        token = batches.preview_migration("research-agent", source="1.0.0", target="2.0.0", freeze=True).selection_token
    batch = run_batch(
        batches.start_migration("research-agent", source="1.0.0", target="2.0.0", actor=operator, selection_token=token)
    )

    assert (batch.succeeded, batch.failed) == (8, 3)
    assert sorted(map(canonical, read_out)) == sorted(map(canonical, refused))  # no other context left PostgreSQL
    after = contexts_by_id(ids)
    items = {item.instance_id: item for item in BatchItem.objects.filter(batch=batch)}
    plan = plan_migration(get_registry().get("research-agent"), "1.0.0", "2.0.0")
    for instance_id in ids:
        stored, item = json.loads(before[instance_id]), items[instance_id]
        try:
            expected, _ = plan.apply(stored, "analyze")
        except MigrationFailed as failure:
            assert (item.state, item.error) == ("failed", failure.message)
            assert after[instance_id] == before[instance_id]  # byte for byte: nothing written
            continue
        assert item.state == "succeeded" and json.loads(after[instance_id]) == expected
        assert item.from_context == stored
        assert item.revision_after == WorkflowInstance.objects.get(pk=instance_id).revision
    assert WorkflowInstance.objects.get(pk=ids[0]).context["messages"][0]["id"] == 2**65

    restored = []
    real_move = decisions.move
    monkeypatch.setattr(
        decisions, "move", lambda item, instance, *args: restored.append(args[1]) or real_move(item, instance, *args)
    )
    rollback = run_batch(batches.start_rollback(batch.pk, actor=operator))
    assert rollback.succeeded == 8
    assert restored == [None] * 8  # no snapshot read out: each is copied in SQL
    assert contexts_by_id(ids) == before  # every moved context back, byte for byte
