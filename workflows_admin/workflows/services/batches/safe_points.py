"""Safe points: a move that waited for an instance's running step is applied where the step ends.

A chunk that reaches an instance while its step runs defers its item and marks the instance
(`move_pending`); the step's result write is refused while the mark is set (see steps.py), and
comes here instead. In one transaction, under the instance's row lock: the step's result and its
step run are written as the step would have written them (its next step is not chained), then
each deferred item is decided on that post-step state exactly as a chunk decides it (the migration
path on the post-step context, the step map from where the step left it, the post-step snapshot
kept in the item, the target contract checked). A migrator that fails leaves the instance as the
step left it, with the error on the item. The batch's counters move from deferred to the outcome,
and the batch finishes if that was the last of its work.

A lease that expires (the worker died) and a step that parks resolve the deferred items the same
way, on the pending or parked state.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ...models import IN_FLIGHT_STATUSES, BatchItem, InstanceStatus, MigrationBatch, StepRun, WorkflowInstance
from .. import lifecycle
from ..dispatch import enqueue_step
from ..retries import retry_on_deadlock
from .decisions import migrate_items, rollback_items
from .executor import (
    clear_move_pending,
    count_outcomes,
    finish,
    note_versions_moved,
    outcome_counts,
    write_moves,
    write_unmoved,
)
from .rows import batch_for_chunk, deferred_items_of, work_left

State = MigrationBatch.State
ItemState = BatchItem.State


@retry_on_deadlock()
def record_at_safe_point(instance_id: int, claim_revision: int, changes: dict[str, Any], step_run: StepRun) -> bool:
    """Write a step's result that was refused because a move waits for it, then apply the move.

    Returns False if the instance changed otherwise since the claim (the result is discarded, as
    any stale result is; the caller records the step run as discarded)."""
    with transaction.atomic():
        held = (
            WorkflowInstance.objects.select_for_update(of=("self",))
            .filter(pk=instance_id, revision=claim_revision, status=InstanceStatus.RUNNING)
            .filter(Q(move_pending=True) | Q(version__upgrade_to__isnull=False))
            .values_list("move_pending", "version_id", "version__upgrade_to_id")
            .first()
        )
        if held is None:
            return False
        if changes.get("status") == InstanceStatus.RUNNING:  # no chained claim: the instance moves first
            changes = {**changes, "status": InstanceStatus.PENDING, "lease_expires_at": None}
        WorkflowInstance.objects.filter(pk=instance_id).update(**changes)
        step_run.save()
        move_pending, version_id, upgrade_to = held
        settle_at_rest(instance_id, move_pending=move_pending, upgrade=(version_id, upgrade_to, changes["status"]))
    return True


def settle_at_rest(
    instance_id: int, *, move_pending: bool = True, upgrade: tuple[int, int | None, str] | None = None
) -> None:
    """What waits for the instance's step to end: the deferred moves of batches (if `move_pending`),
    then its version's auto-upgrade (`upgrade`: its version, the target and its status, as the
    caller knows them; None: read them); then its next step is sent. The caller holds the
    instance's row lock."""
    from ..upgrades import upgrade_at_boundary  # upgrades builds on this package

    if move_pending:
        apply_deferred_moves(instance_id)
        upgrade = None  # a deferred move may have moved it: read where it is now
    upgrade_at_boundary(instance_id, upgrade)
    final = WorkflowInstance.objects.filter(pk=instance_id).values_list("status", "revision", "version_id").first()
    if final is None:
        return
    status, revision, version_id = final
    if status == InstanceStatus.PENDING:
        enqueue_step(instance_id, revision)
    elif status not in IN_FLIGHT_STATUSES:  # the step that was waited for finished the instance
        lifecycle.mark_drained_when_empty(version_id, why="its last in-flight instance finished")


def apply_deferred_moves(instance_id: int) -> None:
    """Decide the instance's deferred items on its state now (its step has ended). The caller holds
    the instance's row lock, in a transaction (settle_at_rest sends what is pending afterwards)."""
    stamp_time = timezone.now()
    stamp = stamp_time.isoformat()
    for batch_id, item in deferred_items_of(instance_id):
        instance = item.instance
        if instance is None:
            continue
        batch = batch_for_chunk(batch_id)
        if batch is None:
            continue
        # The step's own revision bump is no change since the selection: it is what was waited for.
        item.expected_revision = instance.revision
        if batch.state == State.PAUSED:
            # Undecided again, at rest: it moves when the batch resumes (a live selection takes it
            # anew, a frozen one has it pending at the post-step revision).
            assert item.id is not None  # read from its row by deferred_items_of
            undecided = BatchItem.objects.filter(pk=item.id)
            if batch.selection_upto is not None:
                undecided.delete()
            else:
                undecided.update(state=ItemState.PENDING, expected_revision=instance.revision)
            count_outcomes(batch, Counter(deferred=-1), stamp_time, batch.next_chunk_at)
            continue
        if batch.state != State.RUNNING:
            item.state, item.error = ItemState.SKIPPED, f"its batch was {batch.state} when the step ended"
        else:
            decide = migrate_items if batch.kind == MigrationBatch.Kind.MIGRATE else rollback_items
            moving = decide(batch, [item], stamp)
            written, _ = write_moves(moving, [item], stamp, taken_by=None)  # with its item, if it moved
            assert written == moving  # the instance is under our lock: its revision cannot have moved on
            note_versions_moved(batch, [item])
        write_unmoved([item], stamp, taken_by=None)
        count_outcomes(batch, outcome_counts([item]), stamp_time, batch.next_chunk_at)
        if batch.state == State.RUNNING and not batch.deferred and not work_left(batch):
            finish(batch, stamp_time)
    clear_move_pending([instance_id])
