"""Test helpers that run the runtime without Celery: the same services the tasks call."""

from __future__ import annotations

from workflows_admin.workflows.models import InstanceStatus, WorkflowInstance
from workflows_admin.workflows.services.steps import run_step


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
