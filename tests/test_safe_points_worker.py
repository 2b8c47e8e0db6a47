"""Safe points with a real worker: a slow, side-effecting step running while a batch migrates its
instance runs once, its output is kept, and the instance goes on on the target version."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflows_admin.workflows.models import MigrationBatch, StepRun, WorkflowInstance
from workflows_admin.workflows.services import batches, steps
from workflows_admin.workflows.services.instances import start_workflow

from .worker import WorkerProcess, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def effects(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def running_first_step(tmp_path, seconds: float) -> tuple[WorkflowInstance, Path]:
    path = tmp_path / "effects.txt"
    instance = start_workflow("toy", {"n": 0, "slow_first": seconds, "effects": str(path)}, version="1.0.0")
    wait_until(lambda: WorkflowInstance.objects.get(pk=instance.pk).status == "running", 30, message="step running")
    return instance, path


def test_a_slow_step_runs_once_and_the_instance_moves_at_its_end(synced, worker_process, tmp_path):
    instance, path = running_first_step(tmp_path, 3)
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0")
    wait_until(lambda: MigrationBatch.objects.get(pk=batch.pk).deferred == 1, 10, message="item deferred")
    assert WorkflowInstance.objects.get(pk=instance.pk).version.version == "1.0.0"  # not moved mid-step
    wait_until(lambda: WorkflowInstance.objects.get(pk=instance.pk).status == "completed", 60, message="done")
    batch.refresh_from_db()
    assert (batch.state, batch.succeeded, batch.deferred) == ("completed", 1, 0)
    instance.refresh_from_db()
    assert effects(path) == [f"{instance.pk} v1.first"]  # the paid call happened once
    assert instance.version.version == "2.0.0"
    assert instance.context["trace"] == ["v1.first", "v2.second"]  # kept, then on at the mapped step
    assert instance.context["label"] == "n=1"  # migrated from the post-step context
    assert not StepRun.objects.filter(instance=instance, outcome="discarded").exists()


def test_a_worker_killed_while_the_item_is_deferred_leaves_nothing_lost_or_run_twice(synced, tmp_path):
    worker = WorkerProcess(extra_env={"WORKFLOWS_STEP_LEASE_SECONDS": "2"}).start()
    try:
        instance, path = running_first_step(tmp_path, 4)
        batch = batches.start_migration("toy", source="1.0.0", target="2.0.0")
        wait_until(lambda: MigrationBatch.objects.get(pk=batch.pk).deferred == 1, 10, message="item deferred")
        worker.kill()  # mid-step: the step never finished, so there is no result to keep
        worker.start()
        wait_until(lambda: steps.recover_stalled_steps() == 0 and _moved(instance), 60, message="takeover")
        wait_until(lambda: WorkflowInstance.objects.get(pk=instance.pk).status == "completed", 60, message="done")
    finally:
        worker.stop()
    batch.refresh_from_db()
    assert (batch.state, batch.succeeded, batch.deferred) == ("completed", 1, 0)
    instance.refresh_from_db()
    assert instance.version.version == "2.0.0"
    assert instance.context["trace"] == ["v2.first", "v2.middle", "v2.second"]
    assert effects(path) == [f"{instance.pk} v2.first"]  # the killed v1 step never reached its effect
    outcomes = list(StepRun.objects.filter(instance=instance).order_by("id").values_list("step", "outcome"))
    assert outcomes[0] == ("first", "abandoned") and all(outcome == "succeeded" for _, outcome in outcomes[1:])


def _moved(instance: WorkflowInstance) -> bool:
    return WorkflowInstance.objects.get(pk=instance.pk).version.version == "2.0.0"
