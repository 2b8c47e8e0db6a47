"""A rollback never lands on a retired version and never reopens finished work (issue 15, item 2)."""

from __future__ import annotations

import pytest

from workflows_admin.workflows.models import BatchItem, StepRun, WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.services import batches, lifecycle
from workflows_admin.workflows.services.errors import Conflict
from workflows_admin.workflows.services.instances import start_workflows

from .helpers import drain_steps, run_batch, waiting_instances


def test_a_rollback_onto_a_retired_version_is_refused_and_changes_nothing(synced, settings):
    settings.WORKFLOWS_WARM_VERSIONS = 0
    waiting_instances(5)
    migration = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0"))
    lifecycle.retire(WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0"))
    for attempt in (lambda: batches.start_rollback(migration.pk, force=True),
                    lambda: batches.rollback_instance(migration.items.first().instance_id, force=True)):  # fmt: skip
        with pytest.raises(Conflict, match="is retired and takes no instances"):
            attempt()
    assert set(WorkflowInstance.objects.values_list("version__version", flat=True)) == {"2.0.0"}
    assert not migration.children.exists()


def test_completed_instances_are_not_reopened_even_by_a_forced_rollback(synced, settings):
    settings.WORKFLOWS_STEP_CHAIN_SECONDS = 0
    instances = start_workflows("toy", [{"n": i} for i in range(4)], version="1.0.0")
    migration = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0"))
    drain_steps()  # every instance completes on 2.0.0
    runs = StepRun.objects.count()
    rollback = run_batch(batches.start_rollback(migration.pk, force=True))
    assert (rollback.succeeded, rollback.skipped) == (0, 4)
    assert all("does not reopen finished work" in item.error for item in BatchItem.objects.filter(batch=rollback))
    assert set(WorkflowInstance.objects.values_list("version__version", "status")) == {("2.0.0", "completed")}
    drain_steps()
    assert StepRun.objects.count() == runs  # no step ran on the old version
    assert len(instances) == 4
