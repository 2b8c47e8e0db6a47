"""Hostile input to the service layer: every call gets a clear ServiceError and the database is unchanged."""

import re

import pytest
from django.db import connection
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from workflows_admin.engine import Contract, InvalidVersion, Version
from workflows_admin.workflows.models import WorkflowInstance
from workflows_admin.workflows.services.errors import ServiceError
from workflows_admin.workflows.services.instances import (
    cancel_instance,
    force_complete,
    signal_workflow,
    start_workflow,
    start_workflows,
)

from .helpers import run_batch

pytestmark = pytest.mark.django_db
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text PostgreSQL can store: no NUL, no lone surrogates (the tests below try those on purpose).
safe_text = st.text(alphabet=st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=20)
json_leaves = st.none() | st.booleans() | st.integers() | safe_text
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(safe_text, inner, max_size=3),
    max_leaves=10,
)
not_a_dict = st.lists(json_values, max_size=3) | json_leaves | st.floats(allow_nan=True) | st.binary(max_size=5)
bad_versions = st.text(max_size=12).filter(lambda text: not _is_version(text))


def _is_version(text: str) -> bool:
    try:
        Version.parse(text)
        return True
    except InvalidVersion:
        return False


def database_checksum() -> str:
    tables = ["workflows_workflowinstance", "workflows_steprun", "workflows_auditevent", "workflows_workflowversion"]
    with connection.cursor() as cursor:
        parts = []
        for table in tables:
            cursor.execute(f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t.id), '')) FROM {table} t")
            parts.append(cursor.fetchone()[0])
    return ":".join(parts)


def refused(call) -> ServiceError:
    with pytest.raises(ServiceError) as error:
        call()
    assert error.value.message and error.value.status_code in (400, 404, 409)
    return error.value


@FUZZ
@given(context=not_a_dict)
def test_contexts_that_are_not_objects(synced, context):
    before = database_checksum()
    error = refused(lambda: start_workflow("toy", context, version="1.0.0"))
    assert error.field == "context"
    assert database_checksum() == before


@FUZZ
@given(context=st.dictionaries(safe_text, json_values, max_size=4))
def test_contexts_that_break_the_contract(synced, context):
    context.pop("n", None)  # toy 1.0.0 requires n
    before = database_checksum()
    error = refused(lambda: start_workflow("toy", context, version="1.0.0"))
    assert "missing required field 'n'" in error.message
    assert database_checksum() == before


@FUZZ
@given(version=bad_versions)
def test_malformed_versions(synced, version):
    before = database_checksum()
    error = refused(lambda: start_workflow("toy", {"n": 1}, version=version))
    assert error.field == "version"
    assert database_checksum() == before


@FUZZ
@given(name=st.text(max_size=30).filter(lambda name: name not in ("toy", "research-agent")))
def test_unknown_workflows(synced, name):
    before = database_checksum()
    error = refused(lambda: start_workflow(name, {"n": 1}))
    assert error.field == "workflow"
    assert database_checksum() == before


@FUZZ
@given(instance_id=st.integers() | st.text(max_size=10) | st.none())
def test_forged_instance_ids(synced, instance_id):
    before = database_checksum()
    for call in (
        lambda: signal_workflow(instance_id, {"ok": True}),
        lambda: cancel_instance(instance_id),
        lambda: force_complete(instance_id),
    ):
        error = refused(call)
        assert error.field == "instance"
    assert database_checksum() == before


def test_one_bad_context_refuses_the_whole_bulk_start(synced):
    before = database_checksum()
    error = refused(lambda: start_workflows("toy", [{"n": 1}, {"n": 2}, {"x": 3}], version="1.0.0"))
    assert error.field == "contexts[2]"
    assert database_checksum() == before


def test_oversized_and_non_json_contexts(synced):
    before = database_checksum()
    refused(lambda: start_workflow("toy", {"n": 1, "text": "nul \x00 inside"}, version="1.0.0"))
    refused(lambda: start_workflow("toy", {"n": 1, "blob": "x" * 2_000_000}, version="1.0.0"))
    refused(lambda: start_workflow("toy", {"n": float("inf")}, version="1.0.0"))
    refused(lambda: start_workflow("toy", {"n": {1, 2}}, version="1.0.0"))
    assert database_checksum() == before


def test_contract_errors_name_every_problem():
    contract = Contract(required=("a",), schema={"type": "object", "properties": {"b": {"type": "integer"}}})
    assert contract.errors({"b": "no"}) == ["missing required field 'a'", "b: 'no' is not of type 'integer'"]


@st.composite
def lone_surrogate_contexts(draw):
    """(context, where): a lone UTF-16 surrogate inside some text, as a value or a key, at some depth;
    `where` is the path the error must name. Hypothesis's text never holds surrogates by itself."""
    surrogate = draw(st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"]))
    around = draw(safe_text)
    cut = draw(st.integers(min_value=0, max_value=len(around)))
    text = around[:cut] + surrogate + around[cut:]
    path = draw(st.lists(st.sampled_from(["notes", "a", 0, 2]), max_size=3))
    as_key = draw(st.booleans())
    node = {text: 1} if as_key else text
    for part in reversed(path):
        node = {part: node} if isinstance(part, str) else [None] * part + [node]
    where = "/".join(map(str, ["x", *path]))
    return {"n": 1, "x": node}, ("in the key " if as_key else "at ") + where


@FUZZ
@given(case=lone_surrogate_contexts())
@example(case=({"n": 1, "x": "\ud800"}, "at x"))
@example(case=({"n": 1, "x": {"\ud800": 1}}, "in the key x"))
@example(case=({"n": 1, "x": {"notes": [None, {"text": "ok \udc00 then"}]}}, "at x/notes/1/text"))
def test_lone_surrogates_are_refused_naming_the_field_and_the_path(synced, case):
    context, where = case
    # "in the key 'a\\ud800' at x/notes, which ..." or "at x/notes/1/text, which ...": the path, exactly.
    kind, path = where.rsplit(" ", 1)
    where = re.compile(rf"{kind} {'.*? at ' if kind == 'in the key' else ''}{re.escape(path)}, which")
    waiting = WorkflowInstance.objects.filter(status="waiting").first()
    if waiting is None:
        from .helpers import drain_steps

        waiting = start_workflow("toy", {"n": 0, "wait": True}, version="1.0.0")
        drain_steps([waiting.pk])
    before = database_checksum()
    error = refused(lambda: start_workflow("toy", context, version="1.0.0"))
    assert error.field == "context" and "lone UTF-16 surrogate" in error.message and where.search(error.message)
    error.message.encode()  # the message itself is text any page or column can hold
    good = [{"n": i} for i in range(999)]
    error = refused(lambda: start_workflows("toy", [*good[:500], context, *good[500:]], version="1.0.0"))
    assert error.field == "contexts[500]" and where.search(error.message)
    error = refused(lambda: signal_workflow(waiting.pk, context))
    assert error.field == "payload" and where.search(error.message)
    assert database_checksum() == before


def test_a_surrogate_pair_is_one_character_and_is_stored(synced):
    instance = start_workflow("toy", {"n": 1, "emoji": "\ud83d\ude00"}, version="1.0.0")  # two code points
    instance.refresh_from_db()
    assert instance.context["emoji"] == "\U0001f600"


@FUZZ
@given(start_key=st.text(min_size=201, max_size=300) | st.integers() | st.just("nul \x00 inside"))
@example(start_key="\ud800")
@example(start_key="key \udfff")
def test_start_keys_that_cannot_be_stored(synced, start_key):
    before = database_checksum()
    error = refused(lambda: start_workflow("toy", {"n": 1}, version="1.0.0", start_key=start_key))
    assert error.field == "start_key"
    assert database_checksum() == before


def instances_checksum() -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t.id), '')) FROM workflows_workflowinstance t"
        )
        return cursor.fetchone()[0]


broken_results = (
    not_a_dict.map(lambda value: ("returns", value))
    | st.sampled_from([ValueError, KeyError, TypeError, ZeroDivisionError, RuntimeError]).map(lambda e: ("raises", e))
    | st.dictionaries(safe_text, json_values, max_size=3).map(lambda d: ("returns", {**d, "n": "not a number"}))
    # Contract-valid but unstorable: PostgreSQL's JSON has no NUL; a set is not JSON at all.
    | st.sampled_from([{"n": 1, "label": "nul \x00 inside"}, {"n": 1, "label": {1, 2}}]).map(lambda d: ("returns", d))
    # ... nor lone surrogates, as a value or a key, however deep.
    | st.sampled_from(
        [
            {"n": 1, "label": "\ud800"},
            {"n": 1, "label": "x", "\udc00": 1},
            {"n": 1, "label": "x", "d": [{"k": "\udbff"}]},
        ]
    ).map(lambda d: ("returns", d))
)


@FUZZ
@given(broken=broken_results)
@example(broken=("returns", {"n": 1, "label": "\ud800"}))
@example(broken=("returns", {"n": 1, "label": "x", "nested": {"\udfff": [1]}}))
@example(broken=("raises", ValueError))
def test_migrators_that_raise_or_return_garbage_fail_their_instances_only(synced, monkeypatch, broken):
    """Every instance of the batch fails with an error naming the migrator; no instance changes."""
    from workflows_admin.workflows.models import MigrationBatch
    from workflows_admin.workflows.services import batches

    from . import workflows_for_tests

    if not WorkflowInstance.objects.exists():
        start_workflows("toy", [{"n": i} for i in range(3)], version="1.0.0")
    kind, value = broken

    def migrator(context):
        if kind == "raises":
            raise value("the author's bug \x00 with a NUL and a lone \ud800")
        return value

    migration = workflows_for_tests.toy.migrations[next(iter(workflows_for_tests.toy.migrations))]
    monkeypatch.setattr(migration, "func", migrator)
    before = instances_checksum()
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0")
    run_batch(batch.pk)
    batch = MigrationBatch.objects.get(pk=batch.pk)
    assert (batch.state, batch.failed, batch.succeeded) == ("completed_with_failures", 3, 0)
    for error in batch.items.values_list("error", flat=True):
        assert error.startswith(
            ("migrator 1.0.0->2.0.0", "result of migrator 1.0.0->2.0.0", "result breaks the contract of 2.0.0")
        ), error
    assert instances_checksum() == before
