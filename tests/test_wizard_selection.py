"""Issue 19: selection by step, context query and error text; the operator's step-map override in
the dry-run, the batch's chunks, the audit log and the command line."""

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from workflows_admin.workflows.models import (
    AuditEvent,
    InstanceStatus,
    MigrationBatch,
    WorkflowInstance,
    WorkflowVersion,
)
from workflows_admin.workflows.services import batches
from workflows_admin.workflows.services.batches.validation import selected_instances
from workflows_admin.workflows.services.errors import InvalidInput

from .helpers import run_batch
from .test_cli_pipelines import refused
from .test_hostile_requests import database_checksum

pytestmark = pytest.mark.django_db


def make(context, *, step="second", status=InstanceStatus.WAITING, reason="", version="1.0.0") -> int:
    row = WorkflowVersion.objects.get(workflow__name="toy", version=version)
    now = timezone.now()
    return WorkflowInstance.objects.create(
        workflow_id=row.workflow_id,
        version=row,
        status=status,
        current_step=step,
        context=context,
        status_reason=reason,
        created_at=now,
        updated_at=now,
    ).pk


@pytest.fixture
def population(synced):
    """Eight toy instances on 1.0.0 with varied steps, contexts and errors, by name."""
    return {
        "shout": make({"n": 1, "model_config": {"style": "shout"}, "sources": ["a", "b"]}),
        "plain": make({"n": 2, "model_config": {"style": "plain"}, "sources": []}),
        "nested_list": make({"n": 3, "model_config": {"style": ["shout"]}}),
        "null_style": make({"n": 4, "model_config": {"style": None}}),
        "no_config": make({"n": 5}, step="first", status=InstanceStatus.PENDING),
        "first_shout": make({"n": 6, "model_config": {"style": "shout"}}, step="first", status=InstanceStatus.PENDING),
        "timeout": make({"n": 7}, status=InstanceStatus.FAILED, reason="RuntimeError: model Timeout after 30 s"),
        "refused": make({"n": 8}, status=InstanceStatus.FAILED, reason="ValueError: bad input"),
    }


def chosen(population, selection) -> set[str]:
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    ids = set(selected_instances(v1, batches.parse_selection(selection)).values_list("pk", flat=True))
    return {name for name, pk in population.items() if pk in ids}


@pytest.mark.parametrize(
    "selection, names",
    [
        ({"step": "first"}, {"no_config", "first_shout"}),
        ({"step": ["first", "second"], "statuses": ["waiting"]}, {"shout", "plain", "nested_list", "null_style"}),
        ({"where": 'model_config.style = "shout"'}, {"shout", "first_shout"}),  # not ["shout"]: equality is exact
        ({"where": ['model_config.style = "shout"'], "step": "second"}, {"shout"}),
        ({"where": "model_config.style = null"}, {"null_style"}),
        ({"where": "has model_config.style"}, {"shout", "plain", "nested_list", "null_style", "first_shout"}),
        ({"where": "has sources"}, {"shout", "plain"}),
        ({"where": 'sources contains ["b"]'}, {"shout"}),
        ({"where": 'model_config.style contains ["shout"]'}, {"nested_list"}),
        ({"where": '{"model_config": {"style": "shout"}}'}, {"shout", "first_shout"}),
        ({"where": ["has sources", 'model_config.style = "plain"']}, {"plain"}),
        ({"where": 'model_config.style = "nobody"'}, set()),
        ({"error": "timeout"}, {"timeout"}),  # failed instances only, case-insensitive
        ({"error": "Error:", "statuses": ["failed", "waiting"]}, {"timeout", "refused"}),
        ({"statuses": ["failed"]}, {"timeout", "refused"}),
    ],
)
def test_a_selection_by_step_context_or_error_selects_exactly_its_instances(population, selection, names):
    assert chosen(population, selection) == names


@pytest.mark.parametrize(
    "selection, field, words",
    [
        ({"where": "model_config.style = shout"}, "where", 'strings are quoted: "shout"'),
        ({"where": "x = 1 OR 1=1"}, "where", "unexpected"),
        ({"where": ["has a", ""]}, "where", "empty entry"),
        ({"where": [{"a": 1}]}, "where", "must be text"),
        ({"step": "first,,second"}, "step", "empty entry"),
        ({"step": "s" * 201}, "step", "at most 200"),
        ({"error": "boom", "statuses": ["waiting"]}, "error", "add failed to statuses"),
        ({"error": "a\x00b"}, "error", "NUL"),
    ],
)
def test_a_bad_query_is_refused_naming_its_field(population, selection, field, words):
    with pytest.raises(InvalidInput) as error:
        batches.parse_selection(selection)
    assert error.value.field == field and words in str(error.value)


def test_a_live_batch_takes_only_what_still_matches_the_query_when_its_chunk_reaches_it(population):
    batch = batches.start_migration(
        "toy", source="1.0.0", target="2.0.0", selection={"where": 'model_config.style = "shout"'}
    )
    assert batch.total == 2 and batch.selection["where"] == ['model_config.style = "shout"']
    # Changed before the chunk reaches it: no longer matches, so it is not taken.
    WorkflowInstance.objects.filter(pk=population["first_shout"]).update(context={"n": 6})
    run_batch(batch)
    moved = set(WorkflowInstance.objects.filter(version__version="2.0.0").values_list("pk", flat=True))
    assert moved == {population["shout"]}


def test_the_override_moves_instances_to_the_chosen_step_and_is_recorded_and_audited(population, operator):
    override = {"second": "middle"}
    preview = batches.preview_migration(
        "toy",
        source="1.0.0",
        target="2.0.0",
        selection={"statuses": ["waiting"]},
        step_map=override,
        freeze=True,
        actor=operator,
    )
    assert {(m["from"], m["to"]) for m in preview.report["step_moves"]} == {("second", "middle")}
    assert preview.report["plan"]["step_map_override"] == override
    batch = batches.start_migration(
        "toy", source="1.0.0", target="2.0.0", selection_token=preview.selection_token, actor=operator
    )
    assert batch.plan["step_map_override"] == override
    run_batch(batch)
    landed = set(WorkflowInstance.objects.filter(version__version="2.0.0").values_list("current_step", flat=True))
    assert landed == {"middle"}
    started = AuditEvent.objects.get(batch=batch, action="batch.started")
    assert started.details["step_map_override"] == override and started.actor_label == "operator"
    assert started.message.endswith("; second resumes on middle (step map override)")


def test_without_an_override_the_migrations_map_holds(population):
    run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0", selection={"statuses": ["waiting"]}))
    landed = set(WorkflowInstance.objects.filter(version__version="2.0.0").values_list("current_step", flat=True))
    assert landed == {"second"}


def test_a_retry_of_failures_keeps_the_batchs_override(population):
    WorkflowInstance.objects.filter(pk=population["plain"]).update(context={"n": 2, "poison": True})
    batch = run_batch(
        batches.start_migration(
            "toy", source="1.0.0", target="2.0.0", selection={"statuses": ["waiting"]}, step_map=["second=middle"]
        )
    )
    assert batch.failed == 1
    WorkflowInstance.objects.filter(pk=population["plain"]).update(context={"n": 2})
    retry = run_batch(batches.retry_failed(batch.pk))
    assert retry.plan["step_map_override"] == {"second": "middle"}
    assert WorkflowInstance.objects.get(pk=population["plain"]).current_step == "middle"


def test_a_confirmation_with_another_override_than_its_preview_is_refused(population):
    preview = batches.preview_migration(
        "toy", source="1.0.0", target="2.0.0", step_map={"second": "middle"}, freeze=True
    )
    with pytest.raises(batches.commands.Conflict) as error:
        batches.start_migration(
            "toy", source="1.0.0", target="2.0.0", selection_token=preview.selection_token, step_map={"second": "first"}
        )
    assert error.value.field == "step_map"


@pytest.mark.parametrize(
    "step_map, words",
    [
        ({"middle": "first"}, "not a step of 1.0.0"),
        ({"second": "third"}, "not a step of 2.0.0"),
        (["second"], "source_step=target_step"),
        (["second=middle", "second=first"], "twice"),
        (["=middle"], "name a source step"),
    ],
)
def test_an_override_naming_an_unknown_step_is_refused_and_changes_nothing(population, step_map, words):
    before = database_checksum()
    with pytest.raises(InvalidInput) as error:
        batches.start_migration("toy", source="1.0.0", target="2.0.0", step_map=step_map)
    assert error.value.field == "step_map" and words in str(error.value)
    assert database_checksum() == before


def cli_json(*args: str) -> dict:
    out = StringIO()
    call_command("workflows", *args, "--json", stdout=out)
    return json.loads(out.getvalue())


def test_the_command_line_selects_by_query_and_maps_steps(population):
    report = cli_json(
        "migrate", "toy", "--from=1.0.0", "--to=2.0.0", "--dry-run", "--step=second", "--map", "second=middle",
        '--where=model_config.style = "shout"',
    )  # fmt: skip
    assert report["selected"] == 1 and report["step_moves"] == [{"from": "second", "to": "middle", "count": 1}]
    result = cli_json("migrate", "toy", "--from=1.0.0", "--to=2.0.0", "--error=TIMEOUT", "--map=second=middle")
    assert result["total"] == 1 and result["step_map_override"] == {"second": "middle"}
    batch = run_batch(MigrationBatch.objects.get(pk=result["batch_id"]))
    assert batch.succeeded == 1
    assert WorkflowInstance.objects.get(pk=population["timeout"]).current_step == "middle"


@pytest.mark.parametrize(
    "args, field",
    [
        (["--map=second=nowhere"], "step_map"),
        (["--map="], "step_map"),
        (["--where=style = shout"], "where"),
        (["--where= "], "where"),
        (["--step="], "step"),
        (["--error="], "error"),
    ],
)
def test_the_command_line_refuses_a_bad_query_or_map_naming_the_field(population, args, field):
    refused("migrate", "toy", "--from=1.0.0", "--to=2.0.0", *args, field=field)


def test_the_queries_bind_their_values_as_parameters(population):
    """A value that would break out of a string literal is only ever data."""
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    selection = batches.parse_selection({"where": '"x\'; DROP TABLE t; --" = "\'"', "error": "%' OR '1'='1"})
    sql, _params = selected_instances(v1, selection).query.sql_with_params()
    assert "DROP" not in sql and "OR '1'" not in sql
    assert not selected_instances(v1, selection).exists()
    assert connection.vendor == "postgresql"
