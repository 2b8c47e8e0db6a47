"""Deciding each item of a chunk, in memory: whether its instance moves (and to what), fails, is
skipped, conflicts or waits for its running step. Nothing here touches the database; the executor
(or, at a step boundary, safe_points) writes what was decided.

Safe points: an instance whose step is running is not moved; its item is deferred, and the move is
decided again, on the state the step leaves, in the transaction that records the step's result.
Only `interrupt` (an operator's explicit choice, at a batch's max_wait) moves a running instance.
"""

from __future__ import annotations

from workflows_admin.engine import MigrationFailed, MigrationPlan, plan_migration

from ...bulk import JSONText
from ...models import TERMINAL_STATUSES, BatchItem, InstanceStatus, MigrationBatch
from ...runtime import get_registry
from .rows import ChunkBatch, InstanceRow, ItemRow

ItemState = BatchItem.State
# Finished for good: a failed instance still moves (its step re-runs on the target), these never do.
ENDED = (InstanceStatus.COMPLETED, InstanceStatus.CANCELLED, InstanceStatus.EXPIRED)


def changed_since_selection(item: ItemRow, instance: InstanceRow | None, batch: MigrationBatch) -> str:
    """Why a frozen selection's instance is no longer what was selected ("" if it still is).

    Its revision moving on is not enough: on a busy population most selected instances advance a
    step between the preview and their chunk, and a running step is waited for (a safe point). It
    changed if it is on another version, or left the selection: ended, or its status or step no
    longer one the selection names."""
    if instance is None:
        return "instance no longer exists"
    if instance.version_id != batch.source_version_id:
        return "changed since preview: it is on another version now"
    if instance.revision == item.expected_revision or instance.status == InstanceStatus.RUNNING:
        return ""
    moved_on = f"changed since preview: revision {item.expected_revision} -> {instance.revision}"
    selection = batch.selection or {}
    if instance.status in ENDED or instance.status not in selection.get("statuses", [instance.status]):
        return f"{moved_on} (now {instance.status})"
    if "step" in selection and instance.current_step not in selection["step"]:
        return f"{moved_on} (now at step '{instance.current_step}', not a selected step)"
    return ""


def resumed_status(status: str, target_has_code: bool) -> str:
    """Where an instance goes after moving: a step in flight or failed re-runs on the new version."""
    if status == InstanceStatus.WAITING:
        return InstanceStatus.WAITING
    if status == InstanceStatus.PARKED and not target_has_code:
        return InstanceStatus.PARKED
    return InstanceStatus.PENDING


def move(
    item: ItemRow, instance: InstanceRow, version_id: int, context: JSONText | None, step: str, status: str, now: str
) -> None:
    """Snapshot the instance into its item, then move it (in memory; the chunk writes all rows at once).
    A None context is left to the chunk's SQL (a declared migration)."""
    item.from_version_id = instance.version_id
    item.from_step = instance.current_step
    item.from_status = instance.status
    item.from_context = instance.context
    instance.version_id = version_id
    instance.context = context
    instance.current_step = step
    instance.status = status
    instance.finished_at = now if status in TERMINAL_STATUSES else None
    instance.revision += 1
    item.state = ItemState.SUCCEEDED
    item.to_version_id, item.to_step, item.revision_after = version_id, step, instance.revision


def defer(item: ItemRow, instance: InstanceRow) -> None:
    """Wait for the instance's running step: the move is decided when its result is recorded."""
    item.state, item.error = ItemState.DEFERRED, ""
    item.expected_revision = instance.revision  # the write that flags it is checked against this


def migration_plan(batch: ChunkBatch) -> MigrationPlan:
    """The batch's migration path, with the operator's step-map override recorded when it was created."""
    workflow_def = get_registry().get(batch.workflow_name)
    return plan_migration(workflow_def, batch.source_label, batch.target_label, batch.plan.get("step_map_override"))


def migrate_items(
    batch: ChunkBatch, items: list[ItemRow], now: str, *, interrupt: bool = False, plan: MigrationPlan | None = None
) -> list[InstanceRow]:
    """Decide each item of a migration (along `plan`, the batch's, if the caller built it already);
    returns the instances that move. An instance whose context was not read (None: the chunk's SQL
    migrates it, see declared_sql) only has its step mapped."""
    plan = plan or migration_plan(batch)
    target_has_code = get_registry().find_version(batch.workflow_name, batch.target_label) is not None
    target_id = batch.target_version_id
    assert target_id is not None  # batch_for_chunk joins the target version: it has one
    changed = []
    for item in items:
        instance = item.instance
        reason = changed_since_selection(item, instance, batch)
        if reason or instance is None:  # a missing instance has its reason too
            item.state, item.error = ItemState.SKIPPED, reason
            continue
        if instance.status == InstanceStatus.RUNNING and not interrupt:
            defer(item, instance)
            continue
        if instance.status in ENDED:  # its step, waited for, finished the instance
            item.state, item.error = ItemState.SKIPPED, f"{instance.status} when its step ended; nothing left to move"
            continue
        try:
            if instance.context is None:
                context, step = None, plan.map_step(instance.current_step or None)
            else:
                context, step = plan.apply_json(instance.context, instance.current_step or None)
        except MigrationFailed as failure:
            item.state, item.error = ItemState.FAILED, failure.message
            continue
        move(
            item,
            instance,
            target_id,
            JSONText(context) if context is not None else None,
            step or "",
            resumed_status(instance.status, target_has_code),
            now,
        )
        changed.append(instance)
    return changed


def rollback_items(batch: ChunkBatch, items: list[ItemRow], now: str, *, interrupt: bool = False) -> list[InstanceRow]:
    """Decide each item of a rollback; returns the instances restored from their snapshots.

    An instance that moved on since its migration is a conflict unless the rollback is forced; one
    that completed or was cancelled since is never reopened unless the rollback asks for it.
    """
    changed = []
    for item in items:
        instance = item.instance
        if instance is None:
            item.state, item.error = ItemState.SKIPPED, "instance no longer exists"
            continue
        if instance.revision != item.expected_revision and not batch.force:
            at_step = f" at '{instance.current_step}'" if instance.current_step else ""
            item.state = ItemState.CONFLICT
            item.error = (
                f"moved on since its migration (revision {item.expected_revision} -> {instance.revision}, "
                f"now {instance.status}{at_step}); roll back with force to overwrite"
            )
            continue
        if instance.status in ENDED and not batch.reopen_finished:
            item.state = ItemState.SKIPPED
            item.error = (
                f"{instance.status} since its migration; a rollback does not reopen finished work "
                "unless asked to (reopen finished instances)"
            )
            continue
        if instance.status == InstanceStatus.RUNNING and not interrupt:
            defer(item, instance)
            continue
        # Every rollback item undoes a migration item (kept: its foreign key protects it).
        assert item.undone is not None
        version_id, step, restored, context, undone_id = item.undone
        instance.restore_from = undone_id  # where the UPDATE copies the snapshot from, when not read (None)
        move(
            item,
            instance,
            version_id,
            context,
            step,
            InstanceStatus.PENDING if restored == InstanceStatus.RUNNING else restored,
            now,
        )
        changed.append(instance)
    return changed
