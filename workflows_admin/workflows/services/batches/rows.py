"""Claiming a chunk's work: the batch row locked for the chunk, and the next items or instances
that no other chunk holds (FOR UPDATE SKIP LOCKED), read as plain rows.

The locking protocol: a chunk holds its batch FOR KEY SHARE (chunks of one batch run side by side,
a pause, resume or cancel waits for them), or also FOR NO KEY UPDATE when the batch runs serially.
Frozen items are claimed with SKIP LOCKED and their instances read unlocked (the write is checked
against the revision read); a live selection's instances are locked with SKIP LOCKED as they are taken.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from django.db import connection
from django.db.models import BooleanField, QuerySet, TextField
from django.db.models.expressions import RawSQL

from ...bulk import JSONText
from ...declared_sql import DeclaredSQL
from ...models import BatchItem, MigrationBatch, Workflow, WorkflowInstance, WorkflowVersion
from .scheduling import runs_serially
from .validation import selected_instances

if TYPE_CHECKING:
    from django.db.backends.utils import CursorWrapper

    class ChunkBatch(MigrationBatch):
        """For the checker only: a batch as batch_for_chunk reads it, with its raw query's extra columns."""

        workflow_name: str
        source_label: str
        target_label: str

else:
    ChunkBatch = MigrationBatch

# A claimed item's columns: id (None: not written yet), instance id, expected revision, undoes id, state.
type ClaimedRow = tuple[int | None, int, int, int | None, str]
# What a rollback item restores: the version id, step, status and context of the item it undoes
# (None: not read, the chunk's UPDATE copies it in SQL), and that item's id.
type Snapshot = tuple[int, str, str, JSONText | None, int]

ItemState = BatchItem.State
ITEM_TABLE, INSTANCE_TABLE = BatchItem._meta.db_table, WorkflowInstance._meta.db_table

# What a chunk writes back to an item.
ITEM_FIELDS = (
    "state",
    "from_version",
    "from_step",
    "from_status",
    "from_context",
    "to_version",
    "to_step",
    "revision_after",
    "error",
)


class InstanceRow:
    """An instance as a chunk reads and moves it: plain attributes, no model instance to build (a
    third of a chunk's Python time went to building BatchItem and WorkflowInstance objects)."""

    __slots__ = (
        "context",
        "current_step",
        "finished_at",
        "id",
        "read_revision",
        "restore_from",
        "revision",
        "status",
        "version_id",
    )

    def __init__(
        self, id: int, version_id: int, context: str | None, current_step: str, status: str, revision: int
    ) -> None:
        # None: not read, the chunk's SQL migrates it (a declared migration, declared_sql.py).
        self.id, self.version_id = id, version_id
        self.context: JSONText | None = JSONText(context) if context is not None else None
        self.current_step, self.status = current_step, status
        self.finished_at: str | None  # set when a move decides it (decisions.move)
        self.revision = self.read_revision = revision  # the write is checked against the revision read
        self.restore_from: int | None = None  # a rollback's: the item whose snapshot the UPDATE copies


class ItemRow:
    """A pending item with its instance as read, and what processing it decided (written back by
    bulk_update_rows)."""

    __slots__ = (
        "claimed_state",
        "error",
        "expected_revision",
        "from_context",
        "from_status",
        "from_step",
        "from_version_id",
        "id",
        "instance",
        "instance_id",
        "revision_after",
        "state",
        "to_step",
        "to_version_id",
        "undone",
    )

    def __init__(
        self,
        id: int | None,  # None: a live selection's instance, its item not written yet
        instance_id: int,
        expected_revision: int,
        instance: InstanceRow | None,
        undone: Snapshot | None,
    ) -> None:
        self.id, self.instance_id, self.expected_revision = id, instance_id, expected_revision
        self.instance = instance  # None: the instance no longer exists
        # A rollback item: the snapshot it restores (version, step, status, context of the item it undoes).
        self.undone = undone
        self.state: str = ItemState.PENDING
        self.error = ""
        self.claimed_state: str = ItemState.PENDING  # what it was when claimed: pending, or deferred
        self.from_version_id: int | None = None
        self.to_version_id: int | None = None
        self.revision_after: int | None = None
        self.from_step = self.from_status = self.to_step = ""
        self.from_context: JSONText | None = None


def claim_items(
    batch: MigrationBatch, limit: int, *, overdue_before: datetime | None = None, declared: DeclaredSQL | None = None
) -> list[ItemRow]:
    """The next pending items no other chunk holds (FOR UPDATE SKIP LOCKED), in id order, each with
    its instance as it is now and, for a rollback, the snapshot it restores. With `overdue_before`:
    the deferred items deferred before then instead (their batch's max_wait is up). With `declared`,
    a context the chunk's SQL migrates is not read (see DeclaredSQL.read). A rollback on PostgreSQL
    reads no context at all: the chunk's UPDATE copies each snapshot in SQL.

    Three plain queries, not one join: joined, the planner hashes every instance for a chunk of 1,000.
    """
    # SQLite (the demo) has no row locks; its chunks run one at a time.
    locking = " FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
    # The state as a literal: the partial index (batchitem_pending, batchitem_deferred) is chosen at planning time.
    if overdue_before is None:
        where, params = f"state = '{ItemState.PENDING}'", []
    else:
        where, params = f"state = '{ItemState.DEFERRED}' AND finished_at < %s", [overdue_before]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, instance_id, expected_revision, undoes_id, state FROM {ITEM_TABLE} "
            f"WHERE batch_id = %s AND {where} ORDER BY id LIMIT %s{locking}",
            [batch.pk, *params, limit],
        )
        return item_rows(
            cursor,
            cursor.fetchall(),
            rollback=batch.kind == MigrationBatch.Kind.ROLLBACK,
            declared=declared,
            restore_in_sql=restores_in_sql(batch),
        )


def deferred_items_of(instance_id: int) -> list[tuple[int, ItemRow]]:
    """The deferred items of one instance (normally one), locked, in id order, with their batch ids:
    what its step's boundary resolves. The caller holds the instance's row lock."""
    locking = " FOR UPDATE OF item" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT item.id, item.instance_id, item.expected_revision, item.undoes_id, item.state, item.batch_id, "
            f"batch.kind FROM {ITEM_TABLE} item JOIN {MigrationBatch._meta.db_table} batch ON batch.id = item.batch_id "
            f"WHERE item.instance_id = %s AND item.state = '{ItemState.DEFERRED}' ORDER BY item.id{locking}",
            [instance_id],
        )
        found = cursor.fetchall()
        return [
            (row[5], item_rows(cursor, [row[:5]], rollback=row[6] == MigrationBatch.Kind.ROLLBACK)[0]) for row in found
        ]


def restores_in_sql(batch: MigrationBatch) -> bool:
    """Whether the batch's chunks restore snapshots in SQL: a rollback, on PostgreSQL."""
    return batch.kind == MigrationBatch.Kind.ROLLBACK and connection.vendor == "postgresql"


def item_rows(
    cursor: CursorWrapper,
    claimed: list[ClaimedRow],
    *,
    rollback: bool,
    declared: DeclaredSQL | None = None,
    restore_in_sql: bool = False,
) -> list[ItemRow]:
    """Items (id, instance id, expected revision, undoes id, state) with their instances as they
    are now and, for a rollback, the snapshots they restore. With `restore_in_sql` no context is
    read: the instances' are overwritten by the snapshots, which the chunk's UPDATE copies."""
    current = "NULL" if restore_in_sql else read_context("context", declared)
    instances = rows_by_id(
        cursor,
        f"id, version_id, {current}, current_step, status, revision",
        INSTANCE_TABLE,
        [row[1] for row in claimed],
    )
    undone: dict[int, tuple[Any, ...]] = {}
    if rollback:
        snapshot_context = "NULL" if restore_in_sql else "CAST(from_context AS text)"
        undone = rows_by_id(
            cursor,
            f"id, from_version_id, from_step, from_status, {snapshot_context}",
            ITEM_TABLE,
            [row[3] for row in claimed],
        )
    items = []
    for item_id, instance_id, expected_revision, undoes_id, state in claimed:
        instance = instances.get(instance_id)
        snapshot = undone.get(undoes_id) if undoes_id is not None else None
        item = ItemRow(
            item_id,
            instance_id,
            expected_revision,
            InstanceRow(*instance) if instance else None,
            (*snapshot[1:4], JSONText(snapshot[4]) if snapshot[4] is not None else None, snapshot[0])
            if snapshot
            else None,
        )
        item.claimed_state = state
        items.append(item)
    return items


def read_context(column: str, declared: DeclaredSQL | None) -> str:
    """The SQL reading an instance's context as text: all of it, or with a declared migration that
    runs in SQL only those the SQL cannot migrate (the others read as NULL)."""
    return declared.read(column) if declared is not None else f"CAST({column} AS text)"


def rows_by_id(cursor: CursorWrapper, columns: str, table: str, ids: list[int | None]) -> dict[int, tuple[Any, ...]]:
    if connection.vendor == "postgresql":
        cursor.execute(f"SELECT {columns} FROM {table} WHERE id = ANY(%s)", [ids])
    else:
        cursor.execute(f"SELECT {columns} FROM {table} WHERE id IN ({', '.join(['%s'] * len(ids))})", ids)
    return {row[0]: row for row in cursor.fetchall()}


def chunk_limit(batch: MigrationBatch) -> int:
    limit = batch.chunk_size
    if batch.canary_size and batch.processed < batch.canary_size:
        limit = min(limit, batch.canary_size - batch.processed)
    if batch.rate_limit:
        limit = min(limit, batch.rate_limit)  # at most a second's worth per chunk
    return limit


def batch_for_chunk(batch_id: int) -> ChunkBatch | None:
    """The batch row, locked so that chunks of one batch run side by side but never beside a pause,
    with its workflow's name and its versions' labels (`workflow_name`, `source_label`,
    `target_label`), in one query: through the ORM, reading the batch and its relations cost
    more per chunk than the rest of a small chunk.

    Chunks that may run in parallel take FOR KEY SHARE: compatible with each other and with their
    counter UPDATEs, while pause/resume/cancel (FOR UPDATE) wait until every chunk in flight has
    committed. A serial batch's chunk then takes FOR NO KEY UPDATE too, which excludes other chunks
    (and which FOR KEY SHARE never blocks).
    """
    postgresql = connection.vendor == "postgresql"
    version_table = WorkflowVersion._meta.db_table
    rows = MigrationBatch.objects.raw(
        "SELECT batch.*, workflow.name AS workflow_name, source.version AS source_label, "
        f"target.version AS target_label FROM {MigrationBatch._meta.db_table} batch "
        f"JOIN {Workflow._meta.db_table} workflow ON workflow.id = batch.workflow_id "
        f"JOIN {version_table} source ON source.id = batch.source_version_id "
        f"JOIN {version_table} target ON target.id = batch.target_version_id "
        f"WHERE batch.id = %s{' FOR KEY SHARE OF batch' if postgresql else ''}",
        [batch_id],
    )
    # The raw query adds the three columns to each row it reads.
    batch = cast("ChunkBatch | None", next(iter(rows), None))
    if batch is None or not postgresql or not runs_serially(batch):
        return batch
    # Re-read once it is ours; the columns the raw query added are set on it below.
    locked = cast(ChunkBatch, MigrationBatch.objects.select_for_update(no_key=True).get(pk=batch_id))
    locked.workflow_name, locked.source_label, locked.target_label = (
        batch.workflow_name,
        batch.source_label,
        batch.target_label,
    )
    return locked


def live_candidates(batch: MigrationBatch) -> QuerySet[WorkflowInstance]:
    """A live selection's instances not yet taken: matching it now, up to its bound, with no item."""
    # OFFSET 0 keeps "no item" a probe of each matching row: left to itself PostgreSQL makes it a
    # merge anti-join that reads the batch's items from the first instance on, for every chunk.
    # (SQLite, the demo, takes no OFFSET without a LIMIT, and needs no such hint.)
    probe_only = " OFFSET 0" if connection.vendor == "postgresql" else ""
    untaken = RawSQL(
        f"NOT EXISTS (SELECT 1 FROM {ITEM_TABLE} taken WHERE taken.batch_id = %s "
        f"AND taken.instance_id = {INSTANCE_TABLE}.id{probe_only})",
        [batch.pk],
        output_field=BooleanField(),
    )
    return selected_instances(batch.source_version_id, batch.selection).filter(untaken, pk__lte=batch.selection_upto)


def take_instances(
    batch: MigrationBatch, limit: int, after: int, *, declared: DeclaredSQL | None = None
) -> list[ItemRow]:
    """The next instances of a live selection after `after`, in id order, locked (FOR UPDATE SKIP
    LOCKED: the batch's other chunks take the next ones), each as an item to write."""
    column = f'"{INSTANCE_TABLE}"."context"'
    read = RawSQL(read_context(column, declared), [], output_field=TextField())
    rows = (
        live_candidates(batch)
        .filter(pk__gt=after)
        .select_for_update(skip_locked=True, of=("self",))
        .annotate(context_text=read)
        .values_list("pk", "version_id", "context_text", "current_step", "status", "revision")[:limit]
    )
    return [ItemRow(None, row[0], row[5], InstanceRow(*row), None) for row in rows]


def work_left(batch: MigrationBatch) -> bool:
    """Whether anything is left to process, held by another chunk right now (no locks taken)."""
    if batch.selection_upto is not None:
        return live_candidates(batch).exists()
    return BatchItem.objects.filter(batch=batch, state=ItemState.PENDING).exists()
