"""Deciding each item of a chunk, in memory: whether its instance moves (and to what), fails, is
skipped or conflicts. Nothing here touches the database; the executor writes what was decided."""

from __future__ import annotations

from workflows_admin.engine import MigrationFailed, plan_migration

from ...bulk import JSONText
from ...models import TERMINAL_STATUSES, BatchItem, InstanceStatus
from ...runtime import get_registry
from .rows import InstanceRow, ItemRow

ItemState = BatchItem.State


def changed_since_selection(item: ItemRow, instance: InstanceRow | None, version_id: int) -> str:
    if instance is None:
        return "instance no longer exists"
    if instance.revision != item.expected_revision:
        return (
            f"changed since preview: revision {item.expected_revision} -> {instance.revision} (now {instance.status})"
        )
    if instance.version_id != version_id:
        return "changed since preview: it is on another version now"
    return ""


def resumed_status(status: str, target_has_code: bool) -> str:
    """Where an instance goes after moving: a step in flight or failed re-runs on the new version."""
    if status == InstanceStatus.WAITING:
        return InstanceStatus.WAITING
    if status == InstanceStatus.PARKED and not target_has_code:
        return InstanceStatus.PARKED
    return InstanceStatus.PENDING


def move(item: ItemRow, instance: InstanceRow, version_id: int, context, step: str, status: str, now: str) -> None:
    """Snapshot the instance into its item, then move it (in memory; the chunk writes all rows at once)."""
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


def migrate_items(batch, items: list[ItemRow], now: str) -> list[InstanceRow]:
    workflow_def = get_registry().get(batch.workflow_name)
    plan = plan_migration(workflow_def, batch.source_label, batch.target_label)
    target_has_code = get_registry().find_version(batch.workflow_name, batch.target_label) is not None
    changed = []
    for item in items:
        instance = item.instance
        reason = changed_since_selection(item, instance, batch.source_version_id)
        if reason:
            item.state, item.error = ItemState.SKIPPED, reason
            continue
        try:
            context, step = plan.apply_json(instance.context, instance.current_step or None)
        except MigrationFailed as failure:
            item.state, item.error = ItemState.FAILED, failure.message
            continue
        move(
            item,
            instance,
            batch.target_version_id,
            JSONText(context),
            step or "",
            resumed_status(instance.status, target_has_code),
            now,
        )
        changed.append(instance)
    return changed


def rollback_items(batch, items: list[ItemRow], now: str) -> list[InstanceRow]:
    changed = []
    for item in items:
        instance = item.instance
        if instance is None:
            item.state, item.error = ItemState.SKIPPED, "instance no longer exists"
            continue
        if instance.revision != item.expected_revision and not batch.force:
            item.state = ItemState.CONFLICT
            item.error = (
                f"moved on since its migration (revision {item.expected_revision} -> {instance.revision}, "
                f"now {instance.status} at '{instance.current_step}'); roll back with force to overwrite"
            )
            continue
        version_id, step, restored, context = item.undone
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
