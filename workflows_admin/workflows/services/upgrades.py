"""Upgrade policies: a version's instances stay on it (pinned) or move to the workflow's newer
current version at each step boundary (auto), along a migration path, in the transaction that
records the step.

A version's `upgrade_to` is set while its policy is auto and a newer current version is reachable
by a migration path (refresh_upgrade_targets: after a sync, a make-current, a policy change). The
step's result write is refused for such a version's instances (one more condition in its
statement), so it goes through the safe point, which calls upgrade_at_boundary; once a worker
process knows the version's target and batch, its boundaries take one statement instead
(upgrade_boundaries.py), with the same guards. Each move is an
item of the version's auto-upgrade batch (one running batch per source and target): it keeps the
snapshot, shows in progress, audit and rollback like any batch. A migrator that fails leaves the
instance where it was, and its failed item keeps it from being tried again at every step.

Waiting and parked instances reach no step boundary by themselves (a human may take days to
answer): the periodic sweep moves them, in chunks taken with SKIP LOCKED, so an auto-upgrade
version drains without waiting for signals.
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from ..models import BatchItem, InstanceStatus, MigrationBatch, WorkflowInstance, WorkflowVersion
from ..runtime import migration_path_problem
from . import audit, lifecycle
from .audit import Actor
from .batches.decisions import migrate_items
from .batches.executor import (
    count_outcomes,
    finish,
    note_versions_moved,
    outcome_counts,
    write_moves,
    write_unmoved,
)
from .batches.rows import ItemRow, batch_for_chunk, item_rows, take_instances
from .dispatch import enqueue_steps
from .errors import InvalidInput
from .upgrade_boundaries import Route, routes

Policy = WorkflowVersion.UpgradePolicy
# The sweep moves these (no step boundary is near); pending and failed ones move at their next
# boundary or by an operator's batch.
SWEPT_STATUSES = [InstanceStatus.WAITING, InstanceStatus.PARKED]
SWEEP_CHUNK = 500
UPGRADE_LIMIT = 2**62  # an auto batch's live selection has no upper bound


def refresh_upgrade_targets(workflow_id: int) -> None:
    """Point each auto-upgrade version of the workflow at its newer current version, if a migration
    path reaches it; clear the others. Cheap: a handful of version rows."""
    versions = list(WorkflowVersion.objects.filter(workflow_id=workflow_id).select_related("workflow"))
    current = next((v for v in versions if v.state == WorkflowVersion.State.CURRENT), None)
    for version in versions:
        target = None
        if (
            version.upgrade_policy == Policy.AUTO
            and current is not None
            and current.parsed > version.parsed
            and not migration_path_problem(version.workflow.name, version.version, current.version)
        ):
            target = current.pk
        if version.upgrade_to_id != target:
            WorkflowVersion.objects.filter(pk=version.pk).update(upgrade_to_id=target)
            if version.upgrade_to_id is not None:
                _finish_auto_batch(
                    source_id=version.pk, target_id=version.upgrade_to_id
                )  # it no longer moves instances there


def _finish_auto_batch(*, source_id: int, target_id: int) -> None:
    running = MigrationBatch.objects.filter(
        source_version_id=source_id, target_version_id=target_id, auto_upgrade=True, state=MigrationBatch.State.RUNNING
    ).first()
    if running is not None:
        finish(running, timezone.now())


def set_upgrade_policy(version: WorkflowVersion, policy: Any, *, actor: Actor = None) -> WorkflowVersion:
    """An operator's choice of the version's upgrade policy (audited); takes effect at the next boundary."""
    if policy not in Policy.values:
        raise InvalidInput(
            f"upgrade policy must be one of {', '.join(Policy.values)}, got {policy!r}", field="upgrade_policy"
        )
    with transaction.atomic():
        locked = WorkflowVersion.objects.select_for_update().select_related("workflow").get(pk=version.pk)
        previous = locked.upgrade_policy
        locked.upgrade_policy = policy
        locked.save(update_fields=["upgrade_policy"])
        refresh_upgrade_targets(locked.workflow_id)
        locked.refresh_from_db(fields=["upgrade_to"])
        audit.record(
            "version.upgrade_policy",
            actor=actor,
            workflow=locked.workflow,
            version=locked,
            message=f"{locked} upgrade policy {previous} -> {policy}"
            + (
                f"; its instances move to {locked.upgrade_to.version} at their next step boundary"
                if locked.upgrade_to
                else ""
            ),
            details={"previous": previous, "policy": policy},
        )
    return locked


def auto_batch(*, source: WorkflowVersion | int, target_id: int) -> MigrationBatch:
    """The running auto-upgrade batch from `source` to `target_id`, created on first use."""
    source_id = source if isinstance(source, int) else source.pk
    existing = MigrationBatch.objects.filter(
        source_version_id=source_id, target_version_id=target_id, auto_upgrade=True, state=MigrationBatch.State.RUNNING
    ).first()
    if existing is not None:
        return existing
    version = WorkflowVersion.objects.select_related("workflow").get(pk=source_id)
    target = WorkflowVersion.objects.get(pk=target_id)
    now = timezone.now()
    try:
        with transaction.atomic():  # a savepoint: another worker may create it at the same moment
            batch = MigrationBatch.objects.create(
                workflow_id=version.workflow_id,
                kind=MigrationBatch.Kind.MIGRATE,
                source_version_id=source_id,
                target_version_id=target_id,
                auto_upgrade=True,
                state=MigrationBatch.State.RUNNING,
                # A live selection with no bound: the sweep takes what matches when it runs.
                selection={"statuses": [str(status) for status in SWEPT_STATUSES]},
                selection_upto=UPGRADE_LIMIT,
                started_at=now,
                progressed_at=now,
            )
    except IntegrityError:
        return MigrationBatch.objects.get(
            source_version_id=source_id,
            target_version_id=target_id,
            auto_upgrade=True,
            state=MigrationBatch.State.RUNNING,
        )
    audit.record(
        "batch.auto_upgrade_started",
        actor="system:upgrades",
        workflow_id=version.workflow_id,
        version=version,
        batch=batch,
        message=f"{version} auto-upgrades to {target.version}: its instances move at their step boundaries",
    )
    return batch


def upgrade_at_boundary(instance_id: int, known: tuple[int, int | None, str] | None = None) -> None:
    """At a step boundary (the caller holds the instance's row lock, in the transaction that recorded
    the step): move the instance to its version's upgrade target, unless it ended, or its move
    already failed once in this batch. `known`: (version, target, status) as the caller read them."""
    row = known or (
        WorkflowInstance.objects.filter(pk=instance_id)
        .values_list("version_id", "version__upgrade_to_id", "status")
        .first()
    )
    if row is None:
        return
    version_id, target_id, status = row
    if target_id is None or status not in (*SWEPT_STATUSES, InstanceStatus.PENDING, InstanceStatus.FAILED):
        return
    for cached in (True, False):  # a cached batch that has ended since: find or start the next one
        route = routes.get(version_id) if cached else None
        batch_id = (
            route.batch_id
            if route and route.target_id == target_id
            else auto_batch(source=version_id, target_id=target_id).pk
        )
        with connection.cursor() as cursor:
            # One round trip: the instance as it is now, and whether the batch has its item already
            # (moved once, and back by a rollback, or its migrator failed: recorded once, not retried).
            cursor.execute(
                f"SELECT instance.id, EXISTS (SELECT 1 FROM {BatchItem._meta.db_table} item "
                "WHERE item.batch_id = %s AND item.instance_id = instance.id) "
                f"FROM {WorkflowInstance._meta.db_table} instance WHERE instance.id = %s",
                [batch_id, instance_id],
            )
            found = cursor.fetchone()
            if found is None or found[1]:
                return
            items = item_rows(cursor, [(None, instance_id, 0, None, BatchItem.State.PENDING)], rollback=False)
        if _move(batch_id, items) is not None:
            return
        routes.pop(version_id, None)


def _move(batch_id: int, items: list[ItemRow]) -> int | None:
    """Decide and write `items` (instances at rest) in the auto batch, as a live chunk does; returns
    how many moved, or None if the batch is no longer running (nothing written)."""
    batch = batch_for_chunk(batch_id)
    if batch is None or batch.state != MigrationBatch.State.RUNNING:
        return None
    # Known from now on in this process: its next boundaries on the version take one statement.
    source_id, target_id = batch.source_version_id, batch.target_version_id
    assert source_id is not None and target_id is not None  # an auto-upgrade batch has both
    routes[source_id] = Route(target_id, batch.target_label, batch.pk)
    now = timezone.now()
    stamp = now.isoformat()
    for item in items:
        assert item.instance is not None
        item.expected_revision = item.instance.revision
    changed, items = write_moves(migrate_items(batch, items, stamp), items, stamp, taken_by=batch)
    write_unmoved(items, stamp, taken_by=batch)
    # The versions (drained checks lock them) before the batch's counters: the order a boundary's
    # one statement takes them in, or the two could deadlock.
    note_versions_moved(batch, items)
    counts = outcome_counts(items)
    counts["total"] += len(items)
    count_outcomes(batch, counts, now, None)
    enqueue_steps((i.id, i.revision) for i in changed if i.status == InstanceStatus.PENDING)
    return len(changed)


def sweep_auto_upgrades(*, chunk: int = SWEEP_CHUNK) -> int:
    """Move the waiting and parked instances of every version with an upgrade target, a chunk per
    transaction (SKIP LOCKED: two sweeps never take one instance). Returns how many moved."""
    moved = 0
    for version_id, target_id in WorkflowVersion.objects.filter(upgrade_to__isnull=False).values_list(
        "pk", "upgrade_to_id"
    ):
        on_version = WorkflowInstance.objects.filter(version_id=version_id)
        while on_version.filter(status__in=SWEPT_STATUSES).exists():
            with transaction.atomic():
                batch = auto_batch(source=version_id, target_id=target_id)
                items = take_instances(batch, chunk, 0)
                if not items:
                    break  # what is left is locked by another sweep, or has its failed item
                moved += _move(batch.pk, items) or 0
        if not lifecycle.any_in_flight(version_id):  # nothing left on the version: the batch is done
            _finish_auto_batch(source_id=version_id, target_id=target_id)
    return moved
