"""Moving one instance: a batch of one, processed in the caller's request so the operator sees the
outcome at once. It does not queue behind a batch over the same version (`queue=False`): the move is
the operator's, now, and a batch that reaches the instance after it finds it changed."""

from __future__ import annotations

from typing import Any

from ...models import BatchItem, MigrationBatch, WorkflowInstance
from ..audit import Actor
from ..errors import Conflict
from ..lookup import row_by_id
from .commands import start_migration, start_rollback
from .executor import ChunkOutcome, process_chunk
from .validation import MIGRATABLE_STATUSES

ItemState = BatchItem.State


def _process_inline(batch: MigrationBatch) -> MigrationBatch:
    """Single-instance batches run in the caller's request: the operator sees the outcome at once."""
    while process_chunk(batch.pk) == ChunkOutcome.MORE:
        pass
    batch.refresh_from_db()
    return batch


def migrate_instance(instance_id: Any, target: str, *, actor: Actor = None) -> MigrationBatch:
    """Move one instance now; if its step is running, when the step ends (the batch's item is deferred)."""
    instance = _instance(instance_id)
    batch = start_migration(
        instance.workflow.name,
        source=instance.version.version,
        target=target,
        actor=actor,
        selection={"ids": [instance.pk], "statuses": [instance.status]},
        queue=False,
    )
    return _process_inline(batch)


def rollback_instance(
    instance_id: Any, *, actor: Actor = None, force: bool = False, reopen_finished: bool = False
) -> MigrationBatch:
    """Undo the last migration of one instance (a finished one only with `reopen_finished`)."""
    instance = _instance(instance_id, finished_too=reopen_finished)
    last = (
        BatchItem.objects.filter(instance=instance, state=ItemState.SUCCEEDED)
        .select_related("batch")
        .order_by("-id")
        .first()
    )
    if last is None or last.batch.kind != MigrationBatch.Kind.MIGRATE:
        raise Conflict(
            f"instance #{instance.pk} has no migration to roll back (its last change was not one)", field="instance"
        )
    return _process_inline(
        start_rollback(
            last.batch_id,
            actor=actor,
            force=force,
            reopen_finished=reopen_finished,
            instance_ids=[instance.pk],
            queue=False,
        )
    )


def _instance(instance_id: Any, *, finished_too: bool = False) -> WorkflowInstance:
    instance = row_by_id(WorkflowInstance.objects.select_related("workflow", "version"), instance_id, "instance")
    if instance.status not in MIGRATABLE_STATUSES and not finished_too:
        raise Conflict(
            f"instance #{instance.pk} is {instance.status}; only in-flight or failed instances move "
            "(a rollback reopens a finished instance only when asked to)",
            field="instance",
        )
    return instance
