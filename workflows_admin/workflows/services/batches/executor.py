"""The chunk executor: each chunk of a batch, in one transaction, is claimed, decided, written and
scheduled.

- claim: the batch row (locked for the chunk, see rows.batch_for_chunk) and the next pending items,
  or a live selection's next matching instances, that no other chunk holds (SKIP LOCKED);
- decide: the migration path (or the snapshot a rollback restores) runs on each in memory, contexts
  staying JSON text in and out (decisions.py);
- write: every changed instance with one revision-checked UPDATE which also writes its item, the
  snapshot copied in SQL from the row as it was; the other items with one statement. An instance
  that changed since it was read keeps its item pending for the next chunk to decide;
- schedule: the batch's counters, its canary hold, and its next chunk: the caller goes on to it, or
  a task is sent (delayed under a rate limit).

Nothing is processed twice: a chunk delivered twice, or re-run after its worker died, finds the
items no longer pending, or the instances already holding an item. A batch's chunk tasks form
chains (BatchChain) whose leases the worker renews: the resumer replaces a chain whose lease ran out
within seconds, and a task of a replaced chain does nothing.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, Q, Value, When
from django.utils import timezone

from workflows_admin.engine import MigrationPlan, PlanningError

from ...bulk import Following, bulk_insert_values, bulk_update_rows
from ...declared_sql import DeclaredSQL, for_plan
from ...models import BatchItem, InstanceStatus, MigrationBatch, WorkflowInstance
from .. import audit, lifecycle
from ..dispatch import enqueue_steps
from .decisions import migrate_items, migration_plan, rollback_items
from .leases import keeper
from .queueing import launch_next
from .rows import (
    ITEM_FIELDS,
    ChunkBatch,
    InstanceRow,
    ItemRow,
    batch_for_chunk,
    chunk_limit,
    claim_items,
    restores_in_sql,
    take_instances,
    work_left,
)
from .scheduling import RATE_SLACK, adopt_chain, chains, end_chain, enqueue_chunk, renew

State = MigrationBatch.State
ItemState = BatchItem.State


class ChunkOutcome(StrEnum):
    """What a chunk did. A chunk that finds its batch not running returns the batch's state instead."""

    MORE = "more"  # processed; the caller goes on to the next chunk
    HANDED_ON = "handed on"  # processed; the next chunk was sent as a task
    FINISHED = "finished"  # nothing was left: the batch is done
    SCHEDULED = "scheduled"  # not yet time: the chunk is sent again for the batch's start
    CANARY_PAUSED = "canary paused"
    BUSY = "busy"  # what is left is held by the batch's other chunks, which send the next one
    EARLY = "early"  # a second chain of a rate-limited or waiting batch, which ends here
    WAITING = "waiting"  # only deferred items are left: the batch waits for their running steps
    GONE = "gone"  # no such batch
    AUTO_UPGRADE = "auto-upgrade"  # a version's auto-upgrade batch: moved at step boundaries, not by chunks
    RETIRED = "retired"  # the task's chain was replaced by the resumer (or a launch): another carries on


Outcome = ChunkOutcome | str  # str: the state of a batch that is not running

_COUNTERS: dict[str, str] = {
    ItemState.SUCCEEDED: "succeeded",
    ItemState.FAILED: "failed",
    ItemState.SKIPPED: "skipped",
    ItemState.CONFLICT: "conflicts",
    ItemState.DEFERRED: "deferred",
}
# A batch left with deferred items only looks again this often (at most): for items past its
# max_wait, and in case the boundary that resolved the last one could not see the batch finished.
WAITING_RECHECK_SECONDS = 30
_INSTANCE_FIELDS = ("version", "context", "current_step", "status", "finished_at", "revision")


# Outcomes after which the chain has sent its own next task; after any other it ends.
_CHAIN_GOES_ON = frozenset({ChunkOutcome.MORE, ChunkOutcome.HANDED_ON, ChunkOutcome.SCHEDULED, ChunkOutcome.WAITING})


def process_batch(batch_id: int, after: int = 0, chain: int | None = None) -> Outcome:
    """What a chunk task of `chain` runs: chunks of the batch one after another, each in its own
    transaction, with no broker round trip in between, until WORKFLOWS_BATCH_CHAIN_SECONDS is spent;
    the last one sends the task that carries on. A pause, cancel or canary hold takes effect at the
    next chunk, as between tasks. The chain's lease is renewed meanwhile; a retired chain does nothing."""
    chain = adopt_chain(batch_id) if chain is None else chain if renew([chain]) else None
    if chain is None:
        return ChunkOutcome.RETIRED
    deadline = time.monotonic() + settings.WORKFLOWS_BATCH_CHAIN_SECONDS
    with keeper.holding(chain):
        while True:
            last = time.monotonic() >= deadline
            outcome, after = process_chunk_from(batch_id, timezone.now(), hand_on=last, after=after, chain=chain)
            if outcome != ChunkOutcome.MORE or last:
                break
    if outcome not in _CHAIN_GOES_ON:
        end_chain(chain)
    return outcome


def process_chunk(
    batch_id: int, *, now: datetime | None = None, hand_on: bool = True, after: int = 0, chain: int | None = None
) -> Outcome:
    """Process the next chunk: pending items, or for a live selection the next instances after
    `after` that match it. With `hand_on` (a task's last chunk) the next chunk is sent as a new
    task of `chain`; without it the caller goes on to it, unless a rate limit makes it wait."""
    return process_chunk_from(batch_id, now or timezone.now(), hand_on=hand_on, after=after, chain=chain)[0]


@dataclass
class _Chunk:
    batch: ChunkBatch
    items: list[ItemRow]
    live: bool
    processed_before: int
    overdue: bool = False  # deferred items past the batch's max_wait, not pending ones
    changed: list[InstanceRow] = field(default_factory=list)
    plan: MigrationPlan | None = None  # a migration's path, built once for the chunk
    declared: DeclaredSQL | None = None  # the plan as SQL, when the chunk's SQL runs it (declared)


def process_chunk_from(
    batch_id: int, now: datetime, *, hand_on: bool, after: int, chain: int | None = None
) -> tuple[Outcome, int]:
    """process_chunk, and where a live selection's chain got to (the `after` of its next chunk)."""
    started = time.monotonic()
    with transaction.atomic():
        _chunk_work_mem()
        batch = batch_for_chunk(batch_id)
        held = _held(batch, now, after, chain)
        if held is not None:
            return held, after
        assert batch is not None
        chunk, after = _claim(batch, after, now)
        if not chunk.items:
            if work_left(batch):
                return ChunkOutcome.BUSY, after
            if batch.deferred:
                _wait_for_steps(batch, now, after, chain)
                return ChunkOutcome.WAITING, after
            finish(batch, now)
            return ChunkOutcome.FINISHED, after
        stamp = now.isoformat()  # as text once: the rows' timestamps go to PostgreSQL as JSON text anyway
        _decide(chunk, stamp)
        _write(chunk, now, stamp)
        return _schedule(chunk, started, hand_on, after, chain), after


def _chunk_work_mem() -> None:
    """The chunk's statements get WORKFLOWS_CHUNK_WORK_MEM (for this transaction only): the rows
    a chunk writes, and the counting trigger's transition tables, then stay in memory. Measured
    on 1,000 agent-sized contexts: the write spilled 5 MB to temporary files, and 6% of its time."""
    if settings.WORKFLOWS_CHUNK_WORK_MEM and connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('work_mem', %s, true)", [settings.WORKFLOWS_CHUNK_WORK_MEM])


def _held(batch: MigrationBatch | None, now: datetime, after: int, chain: int | None) -> Outcome | None:
    """Why this chunk does nothing now, if it does not run: the batch is gone, not running, not yet
    due, or this is a second chain of a rate-limited batch."""
    if batch is None:
        return ChunkOutcome.GONE
    if batch.state != State.RUNNING:
        return batch.state
    if batch.auto_upgrade:
        return ChunkOutcome.AUTO_UPGRADE
    if batch.not_before and now < batch.not_before:
        enqueue_chunk(batch.pk, (batch.not_before - now).total_seconds(), after, chain)
        return ChunkOutcome.SCHEDULED
    if batch.next_chunk_at and now < batch.next_chunk_at - RATE_SLACK:
        # A redelivered task, or one re-sent by recovery, would double a rate limit or a waiting
        # batch's rechecks: the chain that set next_chunk_at carries the batch on alone.
        return ChunkOutcome.EARLY
    return None


def _claim(batch: ChunkBatch, after: int, now: datetime) -> tuple[_Chunk, int]:
    live = batch.selection_upto is not None
    limit = chunk_limit(batch)
    plan = _plan(batch)
    declared = for_plan(plan) if plan is not None else None
    if live:
        items = take_instances(batch, limit, after, declared=declared)
        if not items and after:
            items = take_instances(batch, limit, 0, declared=declared)  # back for any a failed chunk left behind
        after = items[-1].instance_id if items else 0
    else:
        items = claim_items(batch, limit, declared=declared)
    if not items and batch.deferred and batch.max_wait_seconds is not None:
        overdue_before = now - timedelta(seconds=batch.max_wait_seconds)
        overdue = claim_items(batch, limit, overdue_before=overdue_before, declared=declared)
        return _Chunk(batch, overdue, live, batch.processed, overdue=True, plan=plan, declared=declared), after
    return _Chunk(batch, items, live, batch.processed, plan=plan, declared=declared), after


def _plan(batch: ChunkBatch) -> MigrationPlan | None:
    """A migration's path, for deciding its items and, if it is declared, for the chunk's SQL (which
    then reads no context it can migrate). Without one (its code is gone from this worker) the chunk
    goes on as before: a chunk with items fails in migrate_items, saying why; one without can still
    finish the batch."""
    if batch.kind != MigrationBatch.Kind.MIGRATE:
        return None
    try:
        return migration_plan(batch)
    except (KeyError, PlanningError):
        return None


def _decide(chunk: _Chunk, stamp: str) -> None:
    batch = chunk.batch
    interrupt = chunk.overdue and batch.on_max_wait == MigrationBatch.OnMaxWait.INTERRUPT
    if chunk.overdue and not interrupt:
        for item in chunk.items:
            item.state = ItemState.SKIPPED
            item.error = f"its step was still running after max_wait ({batch.max_wait_seconds} s); not moved"
        return
    if batch.kind == MigrationBatch.Kind.MIGRATE:
        chunk.changed = migrate_items(batch, chunk.items, stamp, interrupt=interrupt, plan=chunk.plan)
    else:
        chunk.changed = rollback_items(batch, chunk.items, stamp, interrupt=interrupt)
    if interrupt:
        audit.record(
            "batch.steps_interrupted",
            actor="system:batches",
            workflow_id=batch.workflow_id,
            batch=batch,
            message=f"moved {len(chunk.changed)} instance(s) whose step was still running after max_wait "
            f"({batch.max_wait_seconds} s), as the batch asked (interrupt); their running steps' results "
            "will be discarded",
            details={"instances": [instance.id for instance in chunk.changed]},
        )


def _write(chunk: _Chunk, now: datetime, stamp: str) -> None:
    batch = chunk.batch
    taken_by = batch if chunk.live and not chunk.overdue else None
    chunk.changed, chunk.items = write_moves(
        chunk.changed, chunk.items, stamp, taken_by=taken_by, computed=_computed_context(chunk)
    )
    chunk.items = flag_deferred(chunk.items)
    write_unmoved(chunk.items, stamp, taken_by=taken_by)
    if chunk.overdue:
        clear_move_pending([item.instance_id for item in chunk.items if item.state != ItemState.SUCCEEDED])
    # A rate-limited batch marks when its next chunk is due (see the EARLY check in _held).
    next_chunk_at = now + timedelta(seconds=len(chunk.items) / batch.rate_limit) if batch.rate_limit else None
    count_outcomes(batch, outcome_counts(chunk.items), now, next_chunk_at)
    enqueue_steps((i.id, i.revision) for i in chunk.changed if i.status == InstanceStatus.PENDING)
    note_versions_moved(batch, chunk.items)


def note_versions_moved(batch: MigrationBatch, items: list[ItemRow]) -> None:
    """Drained means nothing in flight: versions that received instances are draining again, and
    versions whose last in-flight instances left are drained, each audited with this batch."""
    moved = [item for item in items if item.state == ItemState.SUCCEEDED]
    if not moved:
        return
    what = f"{batch.get_kind_display().lower()} #{batch.pk} moved"
    # decisions.move set both version ids on every item it moved: the filters drop nothing.
    onto = {item.to_version_id for item in moved if item.to_version_id is not None}
    lifecycle.reopen_if_drained(onto, why=f"{what} instances onto it", actor="system:batches", batch=batch)
    for version_id in {item.from_version_id for item in moved if item.from_version_id is not None}:
        lifecycle.mark_drained_when_empty(
            version_id, why=f"{what} its last in-flight instances away", actor="system:batches"
        )


def _wait_for_steps(batch: MigrationBatch, now: datetime, after: int, chain: int | None) -> None:
    """Only deferred items are left: look again when the first of them passes max_wait (or at the
    recheck). The mark makes any other chain that turns up meanwhile end (EARLY), and keeps the
    stall resumer from taking a waiting batch for a stalled one."""
    recheck: float = WAITING_RECHECK_SECONDS
    if batch.max_wait_seconds is not None:
        first = (
            BatchItem.objects.filter(batch_id=batch.pk, state=ItemState.DEFERRED)
            .order_by("finished_at")
            .values_list("finished_at", flat=True)
            .first()
        )
        if first is not None:
            due = (first + timedelta(seconds=batch.max_wait_seconds) - now).total_seconds()
            recheck = min(recheck, max(due, 0.0) + RATE_SLACK.total_seconds())
    MigrationBatch.objects.filter(pk=batch.pk).update(progressed_at=now, next_chunk_at=now + timedelta(seconds=recheck))
    enqueue_chunk(batch.pk, recheck, after, chain)


def outcome_counts(items: list[ItemRow]) -> Counter[str]:
    """Each item's outcome counted once; an item that was deferred leaves the deferred count."""
    counts = Counter(_COUNTERS[item.state] for item in items if item.state != item.claimed_state)
    counts["deferred"] -= sum(
        1 for item in items if item.claimed_state == ItemState.DEFERRED and item.state != ItemState.DEFERRED
    )
    return counts


def flag_deferred(items: list[ItemRow]) -> list[ItemRow]:
    """Mark the instances of newly deferred items (move_pending), each only at the revision read:
    their step's result write then goes through the safe point. An instance whose step ended in
    between is not marked and its item not decided (left pending, or for a live selection not
    taken): the next chunk finds it at rest and moves it."""
    deferred = [
        item.instance for item in items if item.state == ItemState.DEFERRED and item.claimed_state != item.state
    ]
    if not deferred:
        return items
    flagged = bulk_update_rows(
        WorkflowInstance,
        deferred,
        (),
        same_for_all={"move_pending": True},
        unless_changed=("revision", "read_revision"),
    )
    if len(flagged) == len(deferred):
        return items
    return [item for item in items if item.state != ItemState.DEFERRED or item.instance_id in flagged]


def clear_move_pending(instance_ids: list[int]) -> None:
    """No move waits for these instances' steps any more (one still deferred by another batch keeps it)."""
    if instance_ids:
        WorkflowInstance.objects.filter(pk__in=instance_ids, move_pending=True).exclude(
            batch_items__state=ItemState.DEFERRED
        ).update(move_pending=False)


def _schedule(chunk: _Chunk, started: float, hand_on: bool, after: int, chain: int | None) -> ChunkOutcome:
    """Hold the batch after its canary if it must, and send the chunk tasks that carry it on."""
    batch = chunk.batch
    successors = 1
    if batch.canary_size and chunk.processed_before < batch.canary_size <= batch.processed:
        if canary_holds(batch):
            return ChunkOutcome.CANARY_PAUSED
        successors = chains(batch)  # past the canary: the batch may fan out
    # Under a rate limit the next chunk waits out the rest of the second(s) this one was allowed.
    wait = len(chunk.items) / batch.rate_limit - (time.monotonic() - started) if batch.rate_limit else 0
    goes_on = not hand_on and not batch.rate_limit  # the caller carries one chain on itself
    for n in range(successors - goes_on):
        # The chain's own next task, unless the caller carries it on; past a canary, new chains.
        enqueue_chunk(batch.pk, wait, after, None if goes_on or n else chain)
    return ChunkOutcome.MORE if hand_on or goes_on else ChunkOutcome.HANDED_ON


def write_unmoved(items: list[ItemRow], stamp: str, *, taken_by: MigrationBatch | None) -> None:
    """Write the decided items whose instance did not move (write_moves wrote the others): a live
    selection's (`taken_by`, its batch) inserted, as it takes them; a frozen one's updated."""
    unmoved = [item for item in items if item.state != ItemState.SUCCEEDED]
    if taken_by is not None:
        bulk_insert_values(
            BatchItem,
            unmoved,
            ("instance_id", "expected_revision", *ITEM_FIELDS),
            same_for_all={"batch_id": taken_by.pk, "finished_at": stamp},
        )
    else:
        bulk_update_rows(BatchItem, unmoved, ITEM_FIELDS, same_for_all={"finished_at": stamp})


def count_outcomes(
    batch: MigrationBatch, outcomes: Counter[str], now: datetime, next_chunk_at: datetime | None
) -> None:
    """Add a chunk's outcomes to the batch's counters (and to its total, under "total": an
    auto-upgrade batch grows as instances join it), record its progress time and when its next
    chunk is due, and read the totals back, in one statement.

    Increments, not the values read at the start: the batch's other chunks add theirs too.
    """
    names = [*_COUNTERS.values(), "total"]
    increments = ", ".join(f"{name} = {name} + %s" for name in names)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {MigrationBatch._meta.db_table} SET progressed_at = %s, next_chunk_at = %s, {increments} "
            f"WHERE id = %s RETURNING {', '.join(names)}",
            [now, next_chunk_at, *(outcomes[name] for name in names), batch.pk],
        )
        totals = cursor.fetchone()
    for name, total in zip(names, totals, strict=True):
        setattr(batch, name, total)
    batch.progressed_at = now


def canary_holds(batch: MigrationBatch) -> bool:
    """After the canary chunk: pause for review (no threshold) or when its failure share is too high."""
    share = batch.failed / batch.processed if batch.processed else 0.0
    limit = batch.canary_max_failure_rate
    figures = {
        "canary": batch.processed,
        "failed": batch.failed,
        "failure_share": round(share, 4),
        "max_failure_share": limit,
    }
    if limit is not None and share <= limit:
        audit.record(
            "batch.canary_passed",
            actor="system:batches",
            workflow_id=batch.workflow_id,
            batch=batch,
            message=f"canary of {batch.processed}: {share:.1%} failed, at most {limit:.1%} allowed; continuing",
            details=figures,
        )
        return False
    batch.state = State.PAUSED
    batch.save(update_fields=["state"])
    reason = "paused for review" if limit is None else f"{share:.1%} failed, above {limit:.1%}; paused"
    audit.record(
        "batch.canary_paused",
        actor="system:batches",
        workflow_id=batch.workflow_id,
        batch=batch,
        message=f"canary of {batch.processed}: {reason}",
        details=figures,
    )
    return True


def finish(batch: MigrationBatch, now: datetime) -> None:
    """Mark the batch done, once: two chunks may find nothing left at the same moment."""
    with_failures = Q(failed__gt=0) | Q(conflicts__gt=0)
    finished = MigrationBatch.objects.filter(pk=batch.pk, state=State.RUNNING).update(
        state=Case(When(with_failures, then=Value(State.COMPLETED_WITH_FAILURES)), default=Value(State.COMPLETED)),
        finished_at=now,
        **settled_total(batch),
    )
    if not finished:
        return
    batch.refresh_from_db()
    audit.record(
        "batch.finished",
        actor="system:batches",
        workflow_id=batch.workflow_id,
        batch=batch,
        message=f"{batch.get_kind_display()} #{batch.pk} {batch.get_state_display().lower()}: "
        f"{batch.succeeded} succeeded, {batch.failed} failed, {batch.skipped} skipped, "
        f"{batch.conflicts} conflicts",
        details={
            "succeeded": batch.succeeded,
            "failed": batch.failed,
            "skipped": batch.skipped,
            "conflicts": batch.conflicts,
        },
    )
    launch_next(batch.source_version_id)  # the next batch queued over its source version starts


def settled_total(batch: MigrationBatch) -> dict[str, int]:
    """A live selection's total, once nothing more will be taken: the instances it took (those
    that no longer matched when reached are not counted). Empty for a frozen selection."""
    if batch.selection_upto is None:
        return {}
    return {"total": BatchItem.objects.filter(batch_id=batch.pk).count()}


def _computed_context(chunk: _Chunk) -> str | None:
    """The SQL the chunk's UPDATE computes an unread (None) context with: a declared migration's,
    or a rollback's copy of the snapshot it restores, still compressed, from the item it undoes."""
    if chunk.declared is not None:
        return chunk.declared.migrated('t."context"')
    if restores_in_sql(chunk.batch):
        items = BatchItem._meta.db_table
        return f'(SELECT undone."from_context" FROM "{items}" AS undone WHERE undone.id = v."restore_from")'
    return None


def write_moves(
    changed: list[InstanceRow],
    items: list[ItemRow],
    now: str,
    *,
    taken_by: MigrationBatch | None,
    computed: str | None = None,
) -> tuple[list[InstanceRow], list[ItemRow]]:
    """One UPDATE for the chunk's moved instances, each row only at the revision read (in id order,
    the order every chunk locks rows in), which in the same statement writes their items (inserted
    for a live selection, `taken_by` its batch; else updated), each snapshot copied from the
    instance's row as it was: a context sent back to be parsed and compressed again cost a quarter of
    an agent-sized chunk. Returns the instances written and the items decided: the item of an
    instance that changed since the read is not written (left pending, or not taken), for the next
    chunk to decide afresh. write_unmoved writes the rest. An instance whose context was not read
    (None) gets the context `computed` gives, in the same UPDATE (see _computed_context; it may
    read the row's `restore_from`): that context never leaves PostgreSQL."""
    changed.sort(key=lambda instance: instance.id)
    moved = [item for item in items if item.state == ItemState.SUCCEEDED]
    written = bulk_update_rows(
        WorkflowInstance,
        changed,
        _INSTANCE_FIELDS,
        # A moved instance starts afresh on its new version: no reason, attempt or lease carried over.
        same_for_all={
            "status_reason": "",
            "attempt": 0,
            "lease_expires_at": None,
            "updated_at": now,
            "move_pending": False,
        },
        unless_changed=("revision", "read_revision"),
        computed={"context": computed} if computed else None,
        carried={"restore_from": "bigint"} if computed else None,
        # decisions.move took the snapshot from the instance as read, the row at the revision
        # checked, and the rest from the instance as it moved it: all of it is taken from the rows in SQL.
        following=Following(
            BatchItem,
            moved,
            key="instance_id",
            copied={
                "from_version": "version",
                "from_step": "current_step",
                "from_status": "status",
                "from_context": "context",
                **({"expected_revision": "revision"} if taken_by else {}),
            },
            written={"to_version": "version", "to_step": "current_step", "revision_after": "revision"},
            same_for_all={
                "state": ItemState.SUCCEEDED,
                "error": "",
                "finished_at": now,
                **({"batch_id": taken_by.pk} if taken_by else {}),
            },
            insert=taken_by is not None,
        ),
    )
    if len(written) == len(changed):
        return changed, items
    lost = {instance.id for instance in changed} - written
    return (
        [instance for instance in changed if instance.id in written],
        [item for item in items if item.instance_id not in lost],
    )
