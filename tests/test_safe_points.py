"""Safe points: a migration never interrupts a running step unless the operator asks it to.

The step's worker is played in this process (claim, execute, record): the batch reaches the
instance between the claim and the record, as it would while a worker runs a slow step.
"""

from __future__ import annotations

import pytest

from workflows_admin.workflows.models import AuditEvent, BatchItem, MigrationBatch, StepRun, WorkflowInstance
from workflows_admin.workflows.services import batches, steps
from workflows_admin.workflows.services.instances import start_workflow, start_workflows

from .helpers import drain_steps, run_batch


@pytest.fixture
def running(synced, settings):
    """An instance whose step "first" of 1.0.0 is running (claimed by a worker)."""
    settings.WORKFLOWS_STEP_CHAIN_SECONDS = 0
    instance = start_workflow("toy", {"n": 0}, version="1.0.0")
    return instance, steps._claim(instance.pk, 1)


def step_runs(instance) -> list[tuple[str, str, str]]:
    return list(
        StepRun.objects.filter(instance=instance).order_by("id").values_list("version__version", "step", "outcome")
    )


def test_a_running_step_is_waited_for_its_result_kept_and_the_instance_moves_at_its_end(running):
    instance, claim = running
    batch = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0"))
    # The batch reached it while its step ran: deferred, not moved, and the batch is not finished.
    assert (batch.state, batch.deferred, batch.succeeded) == ("running", 1, 0)
    assert BatchItem.objects.get(batch=batch).state == "deferred"
    instance.refresh_from_db()
    assert (instance.version.version, instance.status, instance.move_pending) == ("1.0.0", "running", True)

    assert steps._record(claim, steps._execute(claim)) == "advanced; moved at its safe point"
    instance.refresh_from_db()
    # The step's output is in the migrated context; it goes on at the mapped next step of 2.0.0.
    assert instance.context == {"n": 1, "trace": ["v1.first"], "label": "n=1"}
    assert (instance.version.version, instance.status, instance.current_step) == ("2.0.0", "pending", "second")
    assert instance.move_pending is False
    item = BatchItem.objects.get(batch=batch)
    assert (item.state, item.from_step, item.from_context) == ("succeeded", "second", {"n": 1, "trace": ["v1.first"]})
    batch.refresh_from_db()
    assert (batch.state, batch.deferred, batch.succeeded) == ("completed", 0, 1)

    drain_steps([instance.pk])
    instance.refresh_from_db()
    assert instance.context["trace"] == ["v1.first", "v2.second"]  # "first" ran once, never again
    assert step_runs(instance) == [("1.0.0", "first", "succeeded"), ("2.0.0", "second", "succeeded")]


def test_rolling_back_a_move_made_at_a_safe_point_restores_the_post_step_snapshot(running):
    instance, claim = running
    batch = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0", freeze=True))
    steps._record(claim, steps._execute(claim))
    rollback = run_batch(batches.start_rollback(batch.pk))
    assert rollback.succeeded == 1
    instance.refresh_from_db()
    assert (instance.version.version, instance.current_step) == ("1.0.0", "second")
    assert instance.context == {"n": 1, "trace": ["v1.first"]}  # the step's work stays


def test_a_failing_migrator_at_the_safe_point_leaves_the_instance_as_the_step_left_it(running):
    instance, claim = running
    WorkflowInstance.objects.filter(pk=instance.pk).update(context={"n": 0, "poison": True})
    claim.context = {"n": 0, "poison": True}
    batch = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0"))
    steps._record(claim, steps._execute(claim))
    instance.refresh_from_db()
    assert (instance.version.version, instance.status, instance.current_step) == ("1.0.0", "pending", "second")
    assert instance.context == {"n": 1, "poison": True, "trace": ["v1.first"]}
    assert not instance.move_pending
    item = BatchItem.objects.get(batch=batch)
    assert item.state == "failed" and "poisoned context" in item.error
    batch.refresh_from_db()
    assert (batch.state, batch.failed, batch.deferred) == ("completed_with_failures", 1, 0)
    drain_steps([instance.pk])  # it goes on where it was, on 1.0.0
    instance.refresh_from_db()
    assert instance.context["trace"] == ["v1.first", "v1.second"]


def test_max_wait_with_skip_leaves_the_instance_and_its_step_result(running):
    instance, claim = running
    batch = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0", pacing={"max_wait": 0}))
    assert (batch.state, batch.skipped, batch.deferred) == ("completed", 1, 0)  # max_wait 0: skipped at once
    assert "still running after max_wait" in BatchItem.objects.get(batch=batch).error
    assert steps._record(claim, steps._execute(claim)) == "advanced"
    instance.refresh_from_db()
    assert (instance.version.version, instance.current_step, instance.move_pending) == ("1.0.0", "second", False)


def test_max_wait_with_interrupt_moves_it_and_discards_the_running_step_as_asked(running):
    instance, claim = running
    batch = run_batch(
        batches.start_migration(
            "toy", source="1.0.0", target="2.0.0", pacing={"max_wait": 0, "on_max_wait": "interrupt"}
        )
    )
    assert (batch.state, batch.succeeded, batch.deferred) == ("completed", 1, 0)
    assert AuditEvent.objects.filter(action="batch.steps_interrupted", batch=batch).exists()
    assert steps._record(claim, steps._execute(claim)) == "discarded"
    instance.refresh_from_db()
    assert (instance.version.version, instance.status, instance.current_step) == ("2.0.0", "pending", "first")


def test_cancelling_a_batch_drops_its_waiting_moves(running):
    instance, claim = running
    batch = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0"))
    batches.cancel_batch(batch.pk)
    batch.refresh_from_db()
    assert (batch.state, batch.skipped, batch.deferred) == ("cancelled", 1, 0)
    assert steps._record(claim, steps._execute(claim)) == "advanced"
    instance.refresh_from_db()
    assert (instance.version.version, instance.move_pending) == ("1.0.0", False)


@pytest.mark.parametrize("freeze", [False, True], ids=["live", "frozen"])
def test_a_paused_batch_moves_a_waited_for_instance_when_it_resumes(running, freeze):
    instance, claim = running
    batch = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0", freeze=freeze))
    batches.pause_batch(batch.pk)
    steps._record(claim, steps._execute(claim))
    instance.refresh_from_db()
    batch.refresh_from_db()
    assert (instance.version.version, batch.deferred) == ("1.0.0", 0)
    assert not BatchItem.objects.filter(batch=batch, state="deferred").exists()
    batches.resume_batch(batch.pk)
    batch = run_batch(batch)
    instance.refresh_from_db()
    assert (batch.state, instance.version.version, instance.current_step) == ("completed", "2.0.0", "second")
    assert instance.context["trace"] == ["v1.first"]


def test_an_expired_lease_resolves_the_waiting_move_on_the_pending_state(running, settings):
    instance, claim = running
    batch = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0"))
    WorkflowInstance.objects.filter(pk=instance.pk).update(lease_expires_at="2000-01-01T00:00:00Z")
    assert steps.run_step(instance.pk, claim.revision - 1) == "moved at its safe point"  # recovery's takeover
    instance.refresh_from_db()
    assert (instance.version.version, instance.status, instance.current_step) == ("2.0.0", "pending", "first")
    batch.refresh_from_db()
    assert (batch.state, batch.succeeded) == ("completed", 1)
    assert steps._record(claim, steps._execute(claim)) == "discarded"  # the dead worker's late result


def test_the_per_instance_move_waits_for_the_running_step(running):
    instance, claim = running
    batch = batches.migrate_instance(instance.pk, "2.0.0")
    assert (batch.deferred, batch.succeeded) == (1, 0)
    steps._record(claim, steps._execute(claim))
    instance.refresh_from_db()
    assert (instance.version.version, instance.current_step) == ("2.0.0", "second")


def test_instances_at_rest_move_at_once_beside_a_waiting_one(running):
    others = start_workflows("toy", [{"n": i} for i in range(3)], version="1.0.0")
    batch = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0"))
    assert (batch.succeeded, batch.deferred) == (3, 1)
    assert set(WorkflowInstance.objects.filter(version__version="2.0.0").values_list("pk", flat=True)) == {
        other.pk for other in others
    }


def test_the_batch_page_and_the_cli_say_how_many_running_steps_are_waited_for(running, client, operator):
    from django.urls import reverse

    batch = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0", pacing={"max_wait": 600}))
    client.force_login(operator)
    html = client.get(reverse("dashboard:batch", args=[batch.pk])).content.decode()
    assert "waiting for 1 running step" in html and "after 600 s it is skipped" in html
    from workflows_admin.workflows.cli.batch_output import batch_result

    assert batch_result(batch)["deferred"] == 1


def test_the_cli_takes_max_wait_and_the_rollback_option_to_reopen(running):
    import json
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command(
        "workflows", "migrate", "toy", "--from", "1.0.0", "--to", "2.0.0", "--max-wait", "30",
        "--on-max-wait", "interrupt", "--json", stdout=out,
    )  # fmt: skip
    batch = MigrationBatch.objects.get(pk=json.loads(out.getvalue())["batch_id"])
    assert (batch.max_wait_seconds, batch.on_max_wait) == (30, "interrupt")
    assert AuditEvent.objects.get(action="batch.started", batch=batch).details["on_max_wait"] == "interrupt"
    run_batch(batch)
    batches.cancel_batch(batch.pk)
    finished = start_workflows("toy", [{"n": 5}], version="1.0.0")[0]
    migration = run_batch(
        batches.start_migration("toy", source="1.0.0", target="2.0.0", selection={"ids": [finished.pk]})
    )
    drain_steps([finished.pk])
    out = StringIO()
    call_command("workflows", "rollback", str(migration.pk), "--reopen-finished", "--force", "--json", stdout=out)
    assert MigrationBatch.objects.get(pk=json.loads(out.getvalue())["batch_id"]).reopen_finished is True
