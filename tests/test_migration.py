"""Live migration of instances: plans, dry-runs, batches, snapshots, rollback, on PostgreSQL."""

import json
import random
import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from workflows_admin.workflows.models import (
    AuditEvent,
    BatchItem,
    InstanceStatus,
    MigrationBatch,
    WorkflowInstance,
    WorkflowVersion,
)
from workflows_admin.workflows.selectors import batch_progress, instance_history
from workflows_admin.workflows.services import batches, steps
from workflows_admin.workflows.services.batches import executor
from workflows_admin.workflows.services.errors import ServiceError
from workflows_admin.workflows.services.instances import start_workflow, start_workflows
from workflows_admin.workflows.services.registry_sync import sync_registry

from .helpers import drain_steps, run_batch

pytestmark = pytest.mark.django_db


def context_texts(ids) -> dict[int, str]:
    """Contexts exactly as PostgreSQL returns them, for byte-for-byte comparisons."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, context::text FROM workflows_workflowinstance WHERE id = ANY(%s)", [list(ids)])
        return dict(cursor.fetchall())


def checksum() -> str:
    with connection.cursor() as cursor:
        parts = []
        for table in (
            "workflows_workflowinstance",
            "workflows_batchitem",
            "workflows_migrationbatch",
            "workflows_auditevent",
            "workflows_steprun",
        ):
            cursor.execute(f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t.id), '')) FROM {table} t")
            parts.append(cursor.fetchone()[0])
        return ":".join(parts)


def research(n: int, **extra):
    return start_workflows(
        "research-agent", [{"topic": f"t{i}", "raw_text": f"text {i}", **extra} for i in range(n)], version="1.0.0"
    )


def test_chained_migration_maps_steps_and_runs_on(synced, operator):
    instances = research(6)
    drain_steps([instances[0].pk])  # completed: not selected
    waiting = start_workflow("research-agent", {"topic": "w", "raw_text": "x", "needs_review": True}, version="1.0.0")
    drain_steps([waiting.pk])
    batch = run_batch(batches.start_migration("research-agent", source="1.0.0", target="2.1.0", actor=operator))
    assert (batch.state, batch.total, batch.succeeded) == ("completed", 6, 6)
    moved = WorkflowInstance.objects.get(pk=instances[1].pk)
    assert moved.version.version == "2.1.0" and moved.status == "pending" and moved.current_step == "analyze"
    assert moved.context["enriched_text"] == "text 1" and "raw_text" not in moved.context
    assert moved.context["model_config"]["model"] == "fake-model"
    waiting.refresh_from_db()
    assert (waiting.status, waiting.current_step, waiting.version.version) == ("waiting", "summarize", "2.1.0")
    assert WorkflowInstance.objects.get(pk=instances[0].pk).version.version == "1.0.0"
    drain_steps()
    moved.refresh_from_db()
    assert moved.status == "completed"
    assert list(moved.step_runs.filter(version__version="2.1.0").values_list("step", flat=True)) == [
        "summarize",
        "enrich",
        "analyze",
    ]
    assert AuditEvent.objects.filter(action="batch.started", actor=operator, batch=batch).exists()
    history = instance_history(moved)
    assert [(h.from_version.version, h.to_version.version, h.batch.created_by) for h in history] == [
        ("1.0.0", "2.1.0", operator)
    ]
    assert "_migration_history" not in moved.context


def test_dry_run_writes_nothing_and_predicts_the_batch(synced):
    instances = start_workflows("toy", [{"n": i, "poison": i % 10 == 0} for i in range(50)], version="1.0.0")
    before = checksum()
    preview = batches.preview_migration("toy", source="1.0.0", target="2.0.0")
    assert checksum() == before
    report = preview.report
    assert (report["selected"], report["would_migrate"], report["would_fail"]) == (50, 45, 5)
    assert report["errors"] == [
        {
            "error": "migrator 1.0.0->2.0.0 raised ValueError",
            "count": 5,
            "instances": [instances[i].pk for i in range(0, 50, 10)],
            "examples": [
                {"instance": instances[i].pk, "message": "migrator 1.0.0->2.0.0 raised ValueError: poisoned context"}
                for i in range(0, 50, 10)
            ],
        }
    ]
    assert report["examples"][0]["diff"]["added"] == {"label": "n=1"}
    batch = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0"))
    assert (batch.succeeded, batch.failed, batch.state) == (45, 5, "completed_with_failures")
    failed_ids = set(BatchItem.objects.filter(batch=batch, state="failed").values_list("instance_id", flat=True))
    assert failed_ids == set(report["errors"][0]["instances"])


def test_one_failing_instance_of_a_thousand_stays_exactly_as_it_was(synced):
    instances = start_workflows("toy", [{"n": i, "poison": i == 500} for i in range(1000)], version="1.0.0")
    poisoned = instances[500].pk
    before = context_texts([poisoned])
    revision = WorkflowInstance.objects.get(pk=poisoned).revision
    batch = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0", chunk_size=200))
    assert (batch.total, batch.succeeded, batch.failed) == (1000, 999, 1)
    row = WorkflowInstance.objects.get(pk=poisoned)
    assert context_texts([poisoned]) == before and row.revision == revision and row.version.version == "1.0.0"
    item = BatchItem.objects.get(batch=batch, instance_id=poisoned)
    assert item.state == "failed" and "poisoned context" in item.error
    assert WorkflowInstance.objects.filter(version__version="2.0.0").count() == 999
    assert batch_progress(batch)["percent"] == 100.0


def test_rollback_restores_every_context_byte_for_byte(synced, operator):
    instances = research(300, nested={"b": [1, {"c": "é"}], "a": None})
    ids = [i.pk for i in instances]
    drain_steps(ids[:100])  # some have advanced a step before the migration
    before = context_texts(ids)
    versions = dict(WorkflowInstance.objects.filter(pk__in=ids).values_list("pk", "version_id"))
    steps_before = dict(WorkflowInstance.objects.filter(pk__in=ids).values_list("pk", "current_step"))
    batch = run_batch(
        batches.start_migration("research-agent", source="1.0.0", target="2.0.0", actor=operator, chunk_size=64)
    )
    assert batch.succeeded == 200  # the first 100 completed and were not selected
    rollback = run_batch(batches.start_rollback(batch.pk, actor=operator))
    assert (rollback.kind, rollback.parent_id, rollback.succeeded, rollback.conflicts) == ("rollback", batch.pk, 200, 0)
    assert context_texts(ids) == before
    assert dict(WorkflowInstance.objects.filter(pk__in=ids).values_list("pk", "version_id")) == versions
    assert dict(WorkflowInstance.objects.filter(pk__in=ids).values_list("pk", "current_step")) == steps_before
    with pytest.raises(ServiceError, match="no migrated instance left"):
        batches.start_rollback(batch.pk, actor=operator)


def test_rollback_reports_instances_that_moved_on_and_force_overwrites(synced):
    instances = start_workflows("toy", [{"n": i} for i in range(5)], version="1.0.0")
    batch = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0"))
    moved_on = instances[0].pk
    drain_steps([moved_on])  # runs its steps on 2.0.0: revision moves on
    advanced = context_texts([moved_on])
    rollback = run_batch(batches.start_rollback(batch.pk))
    assert (rollback.succeeded, rollback.conflicts, rollback.state) == (4, 1, "completed_with_failures")
    conflict = BatchItem.objects.get(batch=rollback, state="conflict")
    assert conflict.instance_id == moved_on and "moved on since its migration" in conflict.error
    assert context_texts([moved_on]) == advanced  # not overwritten
    # It completed on 2.0.0: even a forced rollback does not reopen finished work...
    forced = run_batch(batches.start_rollback(batch.pk, force=True))
    assert (forced.succeeded, forced.skipped) == (0, 1)
    assert "does not reopen finished work" in BatchItem.objects.get(batch=forced).error
    assert context_texts([moved_on]) == advanced
    # ...unless asked to.
    reopened = run_batch(batches.start_rollback(batch.pk, force=True, reopen_finished=True))
    assert reopened.succeeded == 1
    row = WorkflowInstance.objects.get(pk=moved_on)
    assert row.version.version == "1.0.0" and row.context == {"n": 0}


def test_a_chunk_delivered_twice_migrates_nothing_twice(synced):
    instances = start_workflows("toy", [{"n": i} for i in range(30)], version="1.0.0")
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0", chunk_size=30)
    assert batches.process_chunk(batch.pk) == "more"
    revisions = dict(WorkflowInstance.objects.values_list("pk", "revision"))
    assert batches.process_chunk(batch.pk) == "finished"  # the redelivered chunk finds nothing pending
    assert batches.process_chunk(batch.pk) == "completed"
    assert dict(WorkflowInstance.objects.values_list("pk", "revision")) == revisions
    assert BatchItem.objects.filter(batch=batch).count() == 30
    assert all(r == 2 for pk, r in revisions.items() if pk in {i.pk for i in instances})


def test_an_instance_that_changes_between_the_read_and_the_write_is_decided_by_the_next_chunk(synced, monkeypatch):
    """The chunk reads instances without locking them; its UPDATE is revision-checked. One that a
    step claimed in between is not overwritten: its item stays pending, and the next chunk finds its
    step running (still selected: only a step advanced) and waits for it."""
    instances = start_workflows("toy", [{"n": i} for i in range(5)], version="1.0.0")
    raced = instances[2]
    migrate_items, claims = executor.migrate_items, []

    def a_step_claims_it_meanwhile(batch, items, now, **options):
        changed = migrate_items(batch, items, now, **options)
        if not claims:  # what a worker does between the first chunk's read and its write
            claims.append(steps._claim(raced.pk, 1))
        return changed

    monkeypatch.setattr(executor, "migrate_items", a_step_claims_it_meanwhile)
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0", chunk_size=5, freeze=True)
    assert batches.process_chunk(batch.pk) == "more"
    batch.refresh_from_db()
    assert (batch.succeeded, batch.skipped, batch.processed) == (4, 0, 4)
    assert BatchItem.objects.get(batch=batch, instance=raced).state == "pending"
    raced.refresh_from_db()
    assert (raced.version.version, raced.status, raced.revision) == ("1.0.0", "running", 2)  # the claim stands
    batch = run_batch(batch)
    assert (batch.state, batch.succeeded, batch.deferred, batch.processed) == ("running", 4, 1, 4)
    assert steps._record(claims[0], steps._execute(claims[0])) == "advanced; moved at its safe point"
    batch.refresh_from_db()
    assert (batch.state, batch.succeeded, batch.skipped, batch.processed) == ("completed", 5, 0, 5)
    raced.refresh_from_db()
    assert (raced.version.version, raced.current_step, raced.context["trace"]) == ("2.0.0", "second", ["v1.first"])
    assert WorkflowInstance.objects.filter(version__version="2.0.0", revision=2).count() == 4


def advance(instance) -> str:
    claim = steps._claim(instance.pk, WorkflowInstance.objects.get(pk=instance.pk).revision)
    return steps._record(claim, steps._execute(claim))


def test_a_frozen_selection_moves_instances_that_only_advanced_a_step_since_the_preview(synced):
    """Advancing a step is no change of the selection (on a busy population most selected instances
    advance before their chunk); ending is."""
    instances = start_workflows("toy", [{"n": i} for i in range(4)], version="1.0.0")
    preview = batches.preview_migration("toy", source="1.0.0", target="2.0.0", freeze=True)
    advanced, finished = instances[0], instances[1]
    assert advance(advanced) == "advanced"  # pending at "second" now, a revision on
    drain_steps([finished.pk])
    batch = run_batch(
        batches.start_migration("toy", source="1.0.0", target="2.0.0", selection_token=preview.selection_token)
    )
    assert (batch.state, batch.total, batch.succeeded, batch.skipped) == ("completed", 4, 3, 1)
    advanced.refresh_from_db()
    assert (advanced.version.version, advanced.current_step, advanced.context["n"]) == ("2.0.0", "second", 1)
    skipped = BatchItem.objects.get(batch=batch, state="skipped")
    assert skipped.instance_id == finished.pk
    assert "changed since preview: revision 1 -> " in skipped.error and "(now completed)" in skipped.error


def test_a_frozen_selection_by_step_skips_an_instance_that_advanced_out_of_it(synced):
    stays, leaves = start_workflows("toy", [{"n": i} for i in range(2)], version="1.0.0")
    preview = batches.preview_migration(
        "toy", source="1.0.0", target="2.0.0", selection={"step": ["first"]}, freeze=True
    )
    assert advance(leaves) == "advanced"
    batch = run_batch(
        batches.start_migration("toy", source="1.0.0", target="2.0.0", selection_token=preview.selection_token)
    )
    assert (batch.succeeded, batch.skipped) == (1, 1)
    assert WorkflowInstance.objects.get(pk=stays.pk).version.version == "2.0.0"
    skipped = BatchItem.objects.get(batch=batch, state="skipped")
    assert skipped.instance_id == leaves.pk and "now at step 'second', not a selected step" in skipped.error


def test_a_batch_started_without_a_preview_takes_its_instances_when_it_reaches_them(synced, operator):
    """A live selection: counted at the start, nothing written until a chunk reaches an instance;
    one that finished meanwhile is not taken, one started afterwards is beyond it, a failure is
    not taken twice, and the total settles on what was taken."""
    instances = start_workflows("toy", [{"n": i} for i in range(12)], version="1.0.0")
    poisoned = start_workflow("toy", {"n": 99, "poison": True}, version="1.0.0")
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0", chunk_size=5, actor=operator)
    assert batch.total == 13 and not BatchItem.objects.filter(batch=batch).exists()
    drain_steps([instances[0].pk])  # completed before its turn
    late = start_workflow("toy", {"n": 100}, version="1.0.0")
    batch = run_batch(batch)
    assert (batch.state, batch.total, batch.succeeded, batch.failed, batch.skipped) == (
        "completed_with_failures",
        12,
        11,
        1,
        0,
    )
    taken = dict(BatchItem.objects.filter(batch=batch).values_list("instance_id", "state"))
    assert taken == {**{i.pk: "succeeded" for i in instances[1:]}, poisoned.pk: "failed"}
    assert WorkflowInstance.objects.get(pk=late.pk).version.version == "1.0.0"
    assert WorkflowInstance.objects.get(pk=instances[0].pk).version.version == "1.0.0"
    assert batches.process_chunk(batch.pk, after=0) == "completed_with_failures"  # a late chunk: nothing twice


def test_frozen_selection_skips_what_changed_since_the_preview(synced, operator):
    instances = start_workflows("toy", [{"n": i} for i in range(10)], version="1.0.0")
    preview = batches.preview_migration("toy", source="1.0.0", target="2.0.0", freeze=True, actor=operator)
    assert preview.selected_count == 10
    drain_steps([instances[0].pk])  # finished after the preview
    start_workflows("toy", [{"n": 99}], version="1.0.0")  # started after the preview: not in it
    batch = run_batch(
        batches.start_migration("toy", source="1.0.0", target="2.0.0", selection_token=preview.selection_token)
    )
    assert (batch.total, batch.succeeded, batch.skipped) == (10, 9, 1)
    skipped = BatchItem.objects.get(batch=batch, state="skipped")
    assert skipped.instance_id == instances[0].pk and "changed since preview" in skipped.error
    with pytest.raises(ServiceError, match="already confirmed"):
        batches.start_migration("toy", source="1.0.0", target="2.0.0", selection_token=preview.selection_token)


def test_retry_failed_migrates_exactly_the_failed_ones_once_fixed(synced, monkeypatch):
    from . import workflows_for_tests

    start_workflows("toy", [{"n": i, "poison": i < 3} for i in range(10)], version="1.0.0")
    batch = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0"))
    assert batch.failed == 3
    failed = set(BatchItem.objects.filter(batch=batch, state="failed").values_list("instance_id", flat=True))
    migration = workflows_for_tests.toy.migrations[next(iter(workflows_for_tests.toy.migrations))]
    monkeypatch.setattr(migration, "func", lambda context: {**context, "label": "fixed"})  # the fix is deployed
    retry = run_batch(batches.retry_failed(batch.pk))
    assert (retry.parent_id, retry.total, retry.succeeded) == (batch.pk, 3, 3)
    assert set(retry.items.values_list("instance_id", flat=True)) == failed
    assert WorkflowInstance.objects.filter(version__version="2.0.0").count() == 10


def test_failures_are_retried_once_however_often_retry_is_pressed(synced, monkeypatch):
    from . import workflows_for_tests

    start_workflows("toy", [{"n": i, "poison": i < 3} for i in range(10)], version="1.0.0")
    batch = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0"))
    still_broken = batches.retry_failed(batch.pk)  # the migrator is not fixed yet
    with pytest.raises(ServiceError, match=f"already being retried by batch #{still_broken.pk}"):
        batches.retry_failed(batch.pk)
    assert run_batch(still_broken).failed == 3
    migration = workflows_for_tests.toy.migrations[next(iter(workflows_for_tests.toy.migrations))]
    monkeypatch.setattr(migration, "func", lambda context: {**context, "label": "fixed"})
    fixed = run_batch(batches.retry_failed(batch.pk))  # failed again in the child: still retryable
    assert (fixed.total, fixed.succeeded) == (3, 3)
    with pytest.raises(ServiceError, match="no failed instance left to retry"):
        batches.retry_failed(batch.pk)
    assert MigrationBatch.objects.filter(parent=batch).count() == 2


def test_previews_never_confirmed_are_discarded(synced, operator):
    start_workflows("toy", [{"n": i} for i in range(5)], version="1.0.0")
    old = int(
        batches.preview_migration("toy", source="1.0.0", target="2.0.0", freeze=True, actor=operator).selection_token
    )
    fresh = batches.preview_migration(
        "toy", source="1.0.0", target="2.0.0", freeze=True, actor=operator
    ).selection_token
    MigrationBatch.objects.filter(pk=old).update(created_at=timezone.now() - timezone.timedelta(hours=25))
    assert batches.discard_stale_drafts() == 1
    assert not MigrationBatch.objects.filter(pk=old).exists()
    assert not BatchItem.objects.filter(batch_id=old).exists()
    event = AuditEvent.objects.get(action="batch.previews_discarded")
    assert event.details == {"batches": [old]} and event.actor_label == "system:batches"
    with pytest.raises(ServiceError, match="already confirmed or discarded; preview again"):
        batches.start_migration("toy", source="1.0.0", target="2.0.0", selection_token=str(old))
    launched = batches.start_migration("toy", source="1.0.0", target="2.0.0", selection_token=fresh)
    assert launched.state == "running" and launched.total == 5


def test_pause_resume_cancel(synced, operator):
    start_workflows("toy", [{"n": i} for i in range(30)], version="1.0.0")
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0", chunk_size=10, actor=operator)
    assert batches.process_chunk(batch.pk) == "more"
    batches.pause_batch(batch.pk, actor=operator)
    assert batches.process_chunk(batch.pk) == "paused"  # a chunk task arriving while paused does nothing
    batches.resume_batch(batch.pk, actor=operator)
    assert batches.process_chunk(batch.pk) == "more"
    cancelled = batches.cancel_batch(batch.pk, actor=operator)
    assert (cancelled.state, cancelled.succeeded, cancelled.skipped) == ("cancelled", 20, 10)
    assert WorkflowInstance.objects.filter(version__version="1.0.0").count() == 10
    actions = list(AuditEvent.objects.filter(batch=batch).order_by("id").values_list("action", "actor_label"))
    assert actions == [
        ("batch.started", "operator"),
        ("batch.paused", "operator"),
        ("batch.resumed", "operator"),
        ("batch.cancelled", "operator"),
    ]
    with pytest.raises(ServiceError, match="already cancelled"):
        batches.cancel_batch(batch.pk)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope", "1.0.0", "2.0.0", {}), "unknown workflow 'nope'"),
        (("toy", "1.0.0", "7.0.0", {}), "has no version 7.0.0"),
        (("toy", "1.0.0", "1.0.0", {}), "source and target are both 1.0.0"),
        (("toy", "2.0.0", "1.0.0", {"statuses": ["completed"]}), "statuses must be a list of"),
        (("toy", "1.0.0", "2.0.0", {"started_after": "yesterday"}), "started_after must be an ISO date-time"),
        (("toy", "1.0.0", "2.0.0", {"colour": "red"}), "unknown selection field"),
        (("toy", "1.0.0", "2.0.0", {"ids": ["x"]}), "every id in ids must be a whole number"),
        (("toy", "2.0.0", "1.0.0", {}), "no instance of toy 2.0.0 matches"),
        (("toy", "1.0.0", "x.y", {}), "not a semantic version"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error_and_changes_nothing(synced, args, message):
    start_workflows("toy", [{"n": 1}], version="1.0.0")
    before = checksum()
    workflow, source, target, selection = args
    with pytest.raises(ServiceError, match=message):
        batches.start_migration(workflow, source=source, target=target, selection=selection)
    with pytest.raises(ServiceError, match=message):
        batches.preview_migration(workflow, source=source, target=target, selection=selection)
    assert checksum() == before


def test_no_path_names_the_reachable_versions(synced):
    start_workflows(
        "research-agent", [{"topic": "t", "enriched_text": "x", "sources": [], "model_config": {}}], version="2.1.0"
    )
    with pytest.raises(ServiceError, match=r"no migration path from 2.1.0 to 1.0.0.*reach: no other version"):
        batches.start_migration("research-agent", source="2.1.0", target="1.0.0")


def test_single_instance_migrate_and_rollback(synced, operator):
    instance = start_workflow("toy", {"n": 5}, version="1.0.0")
    batch = batches.migrate_instance(instance.pk, "2.0.0", actor=operator)
    assert (batch.state, batch.total, batch.succeeded) == ("completed", 1, 1)
    instance.refresh_from_db()
    assert instance.version.version == "2.0.0"
    undone = batches.rollback_instance(instance.pk, actor=operator)
    instance.refresh_from_db()
    assert undone.kind == "rollback" and instance.version.version == "1.0.0" and instance.context == {"n": 5}


def test_cli_migrate_dry_run_json_and_errors(synced, capsys):
    start_workflows("toy", [{"n": i} for i in range(4)], version="1.0.0")
    before = checksum()
    call_command("workflows", "migrate", "toy", "--from", "1.0.0", "--to", "2.0.0", "--dry-run", "--json")
    result = json.loads(capsys.readouterr().out)
    assert (result["would_migrate"], result["selected"]) == (4, 4) and checksum() == before
    call_command("workflows", "migrate", "toy", "--from", "1.0.0", "--to", "2.0.0", "--json")
    started = json.loads(capsys.readouterr().out)
    assert started["total"] == 4 and started["state"] == "running"
    run_batch(MigrationBatch.objects.get(pk=started["batch_id"]))
    call_command("workflows", "batches", "--json")
    assert json.loads(capsys.readouterr().out)["batches"][0]["migrated"] == 4
    with pytest.raises(CommandError, match="no migration path|source and target"):
        call_command("workflows", "migrate", "toy", "--from", "2.0.0", "--to", "2.0.0")
    with pytest.raises(CommandError, match="no batch #999"):
        call_command("workflows", "rollback", "999")


def test_started_filters_select_by_age(synced):
    old = start_workflows("toy", [{"n": 1}], version="1.0.0")[0]
    WorkflowInstance.objects.filter(pk=old.pk).update(created_at=timezone.now() - timezone.timedelta(days=3))
    start_workflows("toy", [{"n": 2}], version="1.0.0")
    cutoff = (timezone.now() - timezone.timedelta(days=1)).isoformat()
    batch = run_batch(
        batches.start_migration("toy", source="1.0.0", target="2.0.0", selection={"started_before": cutoff})
    )
    assert list(batch.items.values_list("instance_id", flat=True)) == [old.pk]
    assert WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0").instances.count() == 1
    assert InstanceStatus.PENDING in dict(WorkflowInstance.objects.values_list("pk", "status")).values()


def test_contexts_that_need_escaping_survive_a_migration_and_its_rollback_byte_for_byte(synced, operator):
    """Contexts travel to PostgreSQL as text[] parameters in binary: nothing in them is quoted or escaped."""
    awkward = {
        "quotes": 'she said "no", then \\"yes\\"',
        "array_literal": '{a,"b",NULL}',
        "unicode": "é ✓ 😀 \u2028",
        "controls": "line\nbreak\ttab\r",
        "long": 'x"\\' * 30_000,  # TOASTed and compressed
    }
    ids = [instance.pk for instance in research(30, nested=awkward)]
    before = context_texts(ids)
    batch = run_batch(
        batches.start_migration("research-agent", source="1.0.0", target="2.0.0", actor=operator, chunk_size=8)
    )
    assert batch.succeeded == 30
    moved = WorkflowInstance.objects.get(pk=ids[0]).context
    assert moved["nested"] == awkward and moved["enriched_text"] == "text 0"
    assert BatchItem.objects.get(batch=batch, instance_id=ids[0]).from_context["nested"] == awkward
    run_batch(batches.start_rollback(batch.pk, actor=operator))
    assert context_texts(ids) == before


def test_contexts_and_snapshots_are_compressed_with_lz4():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attrelid::regclass::text, attname, attcompression FROM pg_attribute "
            "WHERE (attrelid, attname) IN (('workflows_workflowinstance'::regclass, 'context'), "
            "('workflows_batchitem'::regclass, 'from_context')) ORDER BY 1"
        )
        assert cursor.fetchall() == [
            ("workflows_batchitem", "from_context", "l"),
            ("workflows_workflowinstance", "context", "l"),
        ]


def test_agent_sized_snapshots_are_copied_compressed_into_the_item_row_and_restore_exactly(synced, operator):
    # About 9 KB of prose each, 3 to 6 KB compressed: out of line in the instance table.
    words = [f"{stem}{n}" for stem in ("source", "claim", "tool", "note") for n in range(60)]
    rng = random.Random(7)
    prose = " ".join(rng.choice(words) for _ in range(1200))
    instances = research(20, transcript=[{"role": "tool", "content": prose}])
    ids = [i.pk for i in instances]
    before = context_texts(ids)
    batch = run_batch(batches.start_migration("research-agent", source="1.0.0", target="2.0.0", actor=operator))
    assert batch.succeeded == 20
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_column_compression(from_context), pg_column_size(from_context), "
            "octet_length(from_context::text) FROM workflows_batchitem WHERE batch_id = %s",
            [batch.pk],
        )
        stored = cursor.fetchall()
        cursor.execute("SELECT reltoastrelid::regclass::text FROM pg_class WHERE relname = 'workflows_batchitem'")
        (toast_table,) = cursor.fetchone()
        cursor.execute(f"SELECT count(*) FROM {toast_table}")
        out_of_line = cursor.fetchone()[0]
    # Copied from the instance as it was stored: lz4-compressed, kept in the item's row (none in its TOAST table).
    assert {compression for compression, _, _ in stored} == {"lz4"}
    assert all(size < text_bytes / 2 for _, size, text_bytes in stored)
    assert out_of_line == 0
    rollback = run_batch(batches.start_rollback(batch.pk, actor=operator))
    assert rollback.succeeded == 20
    assert context_texts(ids) == before


@pytest.mark.parametrize("previewed", [False, True], ids=["live", "frozen"])
def test_every_column_of_a_moved_item_matches_its_instance_before_and_after(synced, operator, previewed):
    instances = research(6)
    drain_steps([instances[0].pk])  # completed: not selected
    waiting = start_workflow("research-agent", {"topic": "w", "raw_text": "x", "needs_review": True}, version="1.0.0")
    drain_steps([waiting.pk])
    columns = ("version_id", "current_step", "status", "revision")
    before = {row[0]: row[1:] for row in WorkflowInstance.objects.values_list("pk", *columns)}
    contexts = context_texts(list(before))
    token = None
    if previewed:
        preview = batches.preview_migration("research-agent", source="1.0.0", target="2.0.0", freeze=True)
        token = preview.selection_token
    batch = run_batch(
        batches.start_migration("research-agent", source="1.0.0", target="2.0.0", actor=operator, selection_token=token)
    )
    assert batch.succeeded == 6
    after = {row[0]: row[1:] for row in WorkflowInstance.objects.values_list("pk", *columns)}
    for item in BatchItem.objects.filter(batch=batch):
        version, step, status, revision = before[item.instance_id]
        moved_version, moved_step, _, moved_revision = after[item.instance_id]
        assert (item.state, item.error, item.expected_revision) == ("succeeded", "", revision)
        assert (item.from_version_id, item.from_step, item.from_status) == (version, step, status)
        assert json.dumps(item.from_context, sort_keys=True) == json.dumps(
            json.loads(contexts[item.instance_id]), sort_keys=True
        )
        assert (item.to_version_id, item.to_step, item.revision_after) == (moved_version, moved_step, moved_revision)
        assert moved_revision == revision + 1 and item.finished_at is not None
    rollback = run_batch(batches.start_rollback(batch.pk, actor=operator))
    assert rollback.succeeded == 6
    for item in BatchItem.objects.filter(batch=rollback):
        version, step, status, revision = before[item.instance_id]
        moved_version, moved_step, _, moved_revision = after[item.instance_id]
        assert (item.from_version_id, item.from_step, item.to_version_id) == (moved_version, moved_step, version)
        assert (item.to_step, item.revision_after) == (step, moved_revision + 1)
    assert context_texts(list(before)) == contexts


@pytest.mark.django_db(transaction=True)
def test_a_write_committed_while_the_chunks_statement_waits_for_the_row_keeps_that_item_pending():
    """The chunk's one statement reads each snapshot at its own start. Another writer holding an
    instance's row lock, committing a new context while the statement waits for that lock: the
    UPDATE re-checks the newest row (revision moved on) and skips it, so no item is written with the
    older snapshot; the next chunk moves it with the newer one."""
    import threading

    import psycopg

    from .worker import database_url

    sync_registry()
    instances = start_workflows("toy", [{"n": i} for i in range(3)], version="1.0.0")
    raced = instances[1]
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0", chunk_size=3, freeze=True)
    holder = psycopg.connect(database_url())
    holder.execute("SELECT 1 FROM workflows_workflowinstance WHERE id = %s FOR UPDATE", [raced.pk])
    migrate_items = executor.migrate_items

    def commit_once_the_statement_waits(batch_row, items, now, **options):
        changed = migrate_items(batch_row, items, now, **options)
        our_pid = connection.connection.info.backend_pid

        def late_writer():
            for _ in range(200):  # until the chunk's statement waits for the row lock
                waiting = holder.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'", [our_pid]
                ).fetchone()
                if waiting:
                    break
                time.sleep(0.01)
            holder.execute(
                "UPDATE workflows_workflowinstance SET context = context || '{\"late\": true}', "
                "revision = revision + 1 WHERE id = %s",
                [raced.pk],
            )
            holder.commit()

        threading.Thread(target=late_writer).start()
        return changed

    executor.migrate_items = commit_once_the_statement_waits
    try:
        assert batches.process_chunk(batch.pk) == "more"
    finally:
        executor.migrate_items = migrate_items
        holder.close()
    items = {item.instance_id: item for item in BatchItem.objects.filter(batch=batch)}
    assert items[raced.pk].state == "pending" and items[raced.pk].from_context is None
    assert {items[i.pk].state for i in instances if i.pk != raced.pk} == {"succeeded"}
    raced.refresh_from_db()
    assert (raced.version.version, raced.revision, raced.context["late"]) == ("1.0.0", 2, True)
    batch = run_batch(batch)
    assert (batch.state, batch.succeeded) == ("completed", 3)
    assert BatchItem.objects.get(batch=batch, instance=raced).from_context == {"n": 1, "late": True}
