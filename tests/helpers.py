"""Test helpers that run the runtime without Celery: the same services the tasks call."""

from __future__ import annotations

from workflows_admin.workflows.models import InstanceStatus, MigrationBatch, WorkflowInstance
from workflows_admin.workflows.services.batches import ChunkOutcome, process_chunk
from workflows_admin.workflows.services.steps import run_step


def run_batch(batch: MigrationBatch | int, *, busy_too: bool = False) -> MigrationBatch:
    """Process a batch's chunks in this process, as the workers' chunk tasks would, until a chunk says
    it is done, or stopped, or (unless `busy_too`) busy with a chain a worker runs.

    Returns the batch as it is then: the one given, refreshed, or the one of the id given.
    """
    batch_id = batch.pk if isinstance(batch, MigrationBatch) else batch
    go_on = (ChunkOutcome.MORE, ChunkOutcome.BUSY) if busy_too else (ChunkOutcome.MORE,)
    while process_chunk(batch_id) in go_on:
        pass
    if isinstance(batch, MigrationBatch):
        batch.refresh_from_db()
        return batch
    return MigrationBatch.objects.get(pk=batch_id)


def drain_steps(instance_ids=None, max_rounds: int = 100) -> int:
    """Run pending steps until nothing is pending; returns how many steps ran."""
    ran = 0
    for _ in range(max_rounds):
        pending = WorkflowInstance.objects.filter(status=InstanceStatus.PENDING)
        if instance_ids is not None:
            pending = pending.filter(pk__in=instance_ids)
        batch = list(pending.values_list("pk", "revision"))
        if not batch:
            return ran
        for instance_id, revision in batch:
            run_step(instance_id, revision)
            ran += 1
    raise AssertionError("steps did not settle")


def waiting_instances(n: int, version: str = "1.0.0") -> None:
    """`n` toy instances waiting for a signal at step "second": no worker runs them, only operators move them."""
    from django.utils import timezone

    from workflows_admin.workflows.models import WorkflowVersion

    row = WorkflowVersion.objects.get(workflow__name="toy", version=version)
    now = timezone.now()
    WorkflowInstance.objects.bulk_create(
        (
            WorkflowInstance(
                workflow_id=row.workflow_id,
                version=row,
                status=InstanceStatus.WAITING,
                current_step="second",
                context={"n": i},
                created_at=now,
                updated_at=now,
            )
            for i in range(n)
        ),
        batch_size=2000,
    )
