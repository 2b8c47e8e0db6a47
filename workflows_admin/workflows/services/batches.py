"""Migrating running instances between versions, and undoing it, in batches processed by Celery.

A batch's selection is frozen or live. A preview, a retry, a rollback or the cleanup freezes it: one
pending BatchItem per instance, with the revision the instance had then; an instance whose revision
moved since is skipped as "changed since preview". A batch started without a preview is live: it is
counted and bounded by the newest matching id when created, and each chunk takes the next instances
that still match, with no item written before the instance is processed.

A chunk (one transaction) takes its work with SELECT ... FOR UPDATE SKIP LOCKED: pending items (their
instances read in a second plain query, not locked) or the next live instances (locked). It runs the
migration path on each in memory (contexts stay JSON text in and out) and writes every changed
instance and item with bulk statements. The instance UPDATE is revision-checked: a frozen item's
instance that changed between the read and the write (a step claimed it) is not written, and its
item stays pending for the next chunk, which decides it on what it finds then. A chunk task goes on
to the next chunk itself for up to WORKFLOWS_BATCH_CHAIN_SECONDS. Several chunks of one batch run at
once (WORKFLOWS_BATCH_PARALLEL_CHUNKS), each on its own rows; a canary still in progress or a rate
limit keeps them to one at a time. An instance whose migrator raises or whose result breaks the target
contract stays exactly as it was and its item records the error. Nothing is processed twice: a chunk
delivered twice, or re-run after its worker died, finds the items no longer pending, or the
instances already holding an item.

The snapshot (version, step, status, context before) is kept in the item row itself, so a rollback
restores it byte for byte; a rollback item refuses an instance that moved on since (a conflict)
unless forced.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import BooleanField, Case, Count, Max, Q, TextField, Value, When
from django.db.models.expressions import RawSQL
from django.db.models.functions import Cast
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from workflows_admin.engine import MigrationFailed, MigrationPlan, PlanningError, dry_run, plan_migration

from ..bulk import JSONText, bulk_insert_values, bulk_update_rows
from ..models import (
    IN_FLIGHT_STATUSES,
    TERMINAL_STATUSES,
    BatchItem,
    InstanceStatus,
    MigrationBatch,
    Workflow,
    WorkflowInstance,
    WorkflowVersion,
)
from ..runtime import get_registry
from . import audit, lifecycle
from .dispatch import enqueue_steps, publish
from .errors import Conflict, InvalidInput, NotFound
from .numbers import parse_id, parse_whole_number
from .retries import retry_on_deadlock

State = MigrationBatch.State
ItemState = BatchItem.State
SELECTION_KEYS = ("statuses", "started_after", "started_before", "ids")
MIGRATABLE_STATUSES = (*IN_FLIGHT_STATUSES, InstanceStatus.FAILED)
MAX_CHUNK = 5000
MAX_INT_COLUMN = 2**31 - 1  # PostgreSQL integer: rate_limit and canary_size are stored in one


# --- selection ------------------------------------------------------------------------------------
def parse_moment(value: Any, field: str) -> datetime:
    """An ISO date-time as an aware datetime in UTC, or InvalidInput naming the field.

    Well-formed text can still name no moment (2026-02-30, an offset of 99 hours) or one that is
    outside what UTC and PostgreSQL hold (year 9999 at -23:59): refused here, never a crash later.
    """
    try:
        moment = value if isinstance(value, datetime) else parse_datetime(value) if isinstance(value, str) else None
        if moment is not None:
            moment = timezone.make_aware(moment, timezone.UTC) if timezone.is_naive(moment) else moment
            moment = moment.astimezone(timezone.UTC)
    except (ValueError, OverflowError):
        moment = None
    if moment is None:
        raise InvalidInput(f"{field} must be an ISO date-time such as 2026-11-24T12:00:00Z, got {value!r}", field=field)
    return moment


def parse_selection(raw: Any) -> dict[str, Any]:
    """Validate a selection filter; returns it normalised (JSON-able). Raises InvalidInput naming the field."""
    if raw in (None, ""):
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidInput(
            "selection must be an object with statuses, started_after, started_before, ids", field="selection"
        )
    unknown = sorted(set(raw) - set(SELECTION_KEYS))
    if unknown:
        raise InvalidInput(
            f"unknown selection field(s): {', '.join(map(str, unknown))}; use {', '.join(SELECTION_KEYS)}",
            field="selection",
        )
    selection: dict[str, Any] = {}
    statuses = raw.get("statuses") or [str(s) for s in IN_FLIGHT_STATUSES]
    if isinstance(statuses, str):
        statuses = [s.strip() for s in statuses.split(",")]  # an empty part ("waiting,,running") is refused below
    if not isinstance(statuses, list) or not all(s in MIGRATABLE_STATUSES for s in statuses):
        allowed = ", ".join(MIGRATABLE_STATUSES)
        raise InvalidInput(f"statuses must be a list of: {allowed} (got {statuses!r})", field="statuses")
    selection["statuses"] = sorted(set(statuses))
    for key in ("started_after", "started_before"):
        value = raw.get(key)
        if value in (None, ""):
            continue
        selection[key] = parse_moment(value, key).isoformat()
    ids = raw.get("ids")
    if ids not in (None, "", []):
        parts = ids.split(",") if isinstance(ids, str) else ids  # an empty part ("8,,9") is refused, not dropped
        if not isinstance(parts, list):
            raise InvalidInput(f"ids must be a list of instance numbers, got {ids!r}", field="ids")
        selection["ids"] = sorted({parse_id(part, "ids", label="every id in ids") for part in parts})
    return selection


def _selected_instances(source: WorkflowVersion | int, selection: dict[str, Any]):
    instances = WorkflowInstance.objects.filter(version=source, status__in=selection["statuses"])
    if "started_after" in selection:
        instances = instances.filter(created_at__gte=parse_datetime(selection["started_after"]))
    if "started_before" in selection:
        instances = instances.filter(created_at__lt=parse_datetime(selection["started_before"]))
    if "ids" in selection:
        instances = instances.filter(pk__in=selection["ids"])
    return instances.order_by("pk")


# --- planning ------------------------------------------------------------------------------------
@dataclass
class Resolved:
    source: WorkflowVersion
    target: WorkflowVersion
    plan: MigrationPlan


def _resolve(workflow: str, source: str, target: str) -> Resolved:
    source_row = lifecycle.get_version(workflow, source)
    target_label = lifecycle.get_version(workflow, target)
    definition = get_registry().get(workflow) if workflow in get_registry() else None
    if definition is None:
        raise Conflict(f"workflow '{workflow}' has no code in this deployment; deploy it to migrate", field="workflow")
    try:
        plan = plan_migration(definition, source_row.version, target_label.version)
    except PlanningError as exc:
        raise InvalidInput(str(exc), field="target") from None
    if target_label.state == WorkflowVersion.State.RETIRED:
        raise Conflict(f"{target_label} is retired and takes no instances; choose another target", field="target")
    return Resolved(source_row, target_label, plan)


@dataclass
class MigrationPreview:
    plan: MigrationPlan
    report: dict[str, Any]
    selected_count: int
    selection_token: str | None  # a draft batch id: confirming it migrates exactly the previewed set


def preview_migration(
    workflow: str,
    source: str,
    target: str,
    *,
    selection: dict | None = None,
    sample_limit: int = 5000,
    freeze: bool = False,
    actor: Any = None,
) -> MigrationPreview:
    """Dry-run the path on the selected instances' contexts (a sample of `sample_limit` for larger sets).

    Writes nothing, unless `freeze`: then the selection (ids and revisions) is kept in a draft batch
    whose id is the selection token, so confirming migrates exactly what was shown.
    """
    resolved = _resolve(workflow, source, target)
    parsed = parse_selection(selection)
    instances = _selected_instances(resolved.source, parsed)
    selected = instances.count()
    if not selected:
        raise InvalidInput(f"no instance of {resolved.source} matches the selection {parsed}", field="selection")
    sample = instances.values_list("pk", "context", "current_step")[:sample_limit]
    report = dry_run(resolved.plan, sample.iterator(chunk_size=1000)).as_dict()
    report.update(selected=selected, sampled=selected > sample_limit)
    token = None
    if freeze:
        draft = _create_batch(resolved, parsed, actor=actor, state=State.DRAFT, chunk_size=500)
        token = str(draft.pk)
        selected = draft.total
        report["selected"] = selected
    return MigrationPreview(resolved.plan, report, selected, token)


# --- creating batches ------------------------------------------------------------------------------
def _user(actor: Any):
    return actor if getattr(actor, "is_authenticated", False) else None


def _check_chunk_size(chunk_size: Any) -> int:
    return parse_whole_number(chunk_size, "chunk_size", minimum=1, maximum=MAX_CHUNK)


def _insert_items(batch: MigrationBatch, instances) -> int:
    """Freeze the selection: one pending item per instance with its current revision, in one INSERT ... SELECT."""
    select_sql, params = instances.values_list("pk", "revision").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {BatchItem._meta.db_table} "
            "(batch_id, instance_id, expected_revision, state, from_step, from_status, to_step, error) "
            f"SELECT %s, selected.pk, selected.revision, %s, '', '', '', '' FROM ({select_sql}) AS selected",
            [batch.pk, ItemState.PENDING, *params],
        )
        return cursor.rowcount


def _create_batch(
    resolved: Resolved, selection: dict, *, actor: Any, state: str, chunk_size: int, live: bool = False
) -> MigrationBatch:
    """A migration batch over the selection: frozen as pending items now, or `live` (counted now,
    taken as the chunks reach it, up to the newest instance that matches now)."""
    with transaction.atomic():
        batch = MigrationBatch.objects.create(
            workflow=resolved.source.workflow,
            kind=MigrationBatch.Kind.MIGRATE,
            source_version=resolved.source,
            target_version=resolved.target,
            selection=selection,
            plan=resolved.plan.describe(),
            state=state,
            created_by=_user(actor),
            chunk_size=_check_chunk_size(chunk_size),
        )
        instances = _selected_instances(resolved.source, selection)
        if live:
            found = instances.order_by().aggregate(total=Count("pk"), upto=Max("pk"))
            batch.total, batch.selection_upto = found["total"], found["upto"]
        else:
            batch.total = _insert_items(batch, instances)
        if not batch.total:
            raise InvalidInput(f"no instance of {resolved.source} matches the selection {selection}", field="selection")
        batch.save(update_fields=["total", "selection_upto"])
    return batch


def _launch(batch: MigrationBatch, actor: Any, action: str, message: str) -> MigrationBatch:
    """Mark a batch running, audit it and send its first chunk after commit (caller holds a transaction)."""
    now = timezone.now()
    batch.state = State.RUNNING
    batch.started_at = batch.started_at or now
    batch.progressed_at = now
    batch.next_chunk_at = None  # the chain sent now is the batch's only one
    batch.save(update_fields=["state", "started_at", "progressed_at", "next_chunk_at"])
    audit.record(
        action,
        actor=actor,
        workflow=batch.workflow,
        version=batch.source_version,
        batch=batch,
        message=message,
        details={"total": batch.total, "selection": batch.selection},
    )
    for _ in range(_chains(batch)):
        _enqueue_chunk(batch.pk)
    return batch


def _runs_serially(batch: MigrationBatch) -> bool:
    """A canary still in progress or a rate limit needs one chunk at a time; so does SQLite (no row locks)."""
    canary_pending = bool(batch.canary_size) and batch.processed < batch.canary_size
    return canary_pending or bool(batch.rate_limit) or connection.vendor != "postgresql"


def _chains(batch: MigrationBatch) -> int:
    """How many chunk tasks work on the batch at once (each sends its successor)."""
    return 1 if _runs_serially(batch) else max(1, settings.WORKFLOWS_BATCH_PARALLEL_CHUNKS)


# A scheduled batch re-checks its start at least this often, so no task waits on a broker for hours.
MAX_WAIT_SECONDS = 300
# A rate-limited batch's own next chunk may arrive this much before its time (clocks, broker).
RATE_SLACK = timedelta(milliseconds=250)


def _enqueue_chunk(batch_id: int, countdown: float = 0, after: int = 0) -> None:
    """Send a chunk task; `after` is where a live selection's chain got to (0: from the start)."""
    from ..tasks import process_batch_chunk

    options = {"countdown": min(countdown, MAX_WAIT_SECONDS)} if countdown > 0 else {}
    transaction.on_commit(lambda: publish(process_batch_chunk, (batch_id, after), **options))


@dataclass
class Pacing:
    """When and how fast a batch runs: a scheduled start, a rate limit, a canary first chunk."""

    not_before: datetime | None = None
    rate_limit: int | None = None
    canary_size: int | None = None
    canary_max_failure_rate: float | None = None

    @classmethod
    def parse(cls, raw: dict | None) -> Pacing:
        raw = {key: value for key, value in (raw or {}).items() if value not in (None, "")}
        unknown = sorted(set(raw) - {"not_before", "rate_limit", "canary_size", "canary_max_failure_rate"})
        if unknown:
            raise InvalidInput(f"unknown pacing option(s): {', '.join(unknown)}", field="pacing")
        pacing = cls()
        if "not_before" in raw:
            pacing.not_before = parse_moment(raw["not_before"], "not_before")
        for key in ("rate_limit", "canary_size"):
            if key in raw:
                setattr(pacing, key, parse_whole_number(raw[key], key, minimum=1, maximum=MAX_INT_COLUMN))
        if "canary_max_failure_rate" in raw:
            try:
                share = float(raw["canary_max_failure_rate"])
            except (TypeError, ValueError):
                share = -1.0
            if not 0 <= share <= 1:
                raise InvalidInput(
                    "canary_max_failure_rate must be a share from 0 to 1 (0.05 = 5%), got "
                    f"{raw['canary_max_failure_rate']!r}",
                    field="canary_max_failure_rate",
                )
            if pacing.canary_size is None:
                raise InvalidInput("canary_max_failure_rate needs canary_size", field="canary_size")
            pacing.canary_max_failure_rate = share
        return pacing

    def apply(self, batch: MigrationBatch) -> None:
        batch.not_before = self.not_before
        batch.rate_limit = self.rate_limit
        batch.canary_size = self.canary_size
        batch.canary_max_failure_rate = self.canary_max_failure_rate


def start_migration(
    workflow: str,
    source: str,
    target: str,
    *,
    selection: dict | None = None,
    actor: Any = None,
    chunk_size: int = 500,
    selection_token: str | None = None,
    pacing: dict | None = None,
    freeze: bool = False,
) -> MigrationBatch:
    """Start migrating the selected instances; with a preview's token, exactly the previewed set.

    Without one the selection is live: the instances that still match it when the chunks reach
    them, up to the newest that matches now; it starts at once, however many there are. `freeze`
    writes the selection down now instead (a pending item each), for a caller that must see it.

    `pacing` may hold not_before (a scheduled start), rate_limit (instances a second) and canary_size
    with canary_max_failure_rate (migrate that many first; pause unless their failure share is at most it).
    """
    resolved = _resolve(workflow, source, target)
    paced = Pacing.parse(pacing)
    if selection_token:
        with transaction.atomic():
            batch = _draft(selection_token)
            if (batch.source_version_id, batch.target_version_id) != (resolved.source.pk, resolved.target.pk):
                raise Conflict("the preview was for other versions; preview again", field="selection_token")
            batch.created_by = batch.created_by or _user(actor)
            batch.chunk_size = _check_chunk_size(chunk_size)
            paced.apply(batch)
            batch.save(
                update_fields=[
                    "created_by",
                    "chunk_size",
                    "not_before",
                    "rate_limit",
                    "canary_size",
                    "canary_max_failure_rate",
                ]
            )
            return _launch(
                batch,
                actor,
                "batch.started",
                f"migrate {batch.total} previewed instance(s) {resolved.source.version} -> {resolved.target.version}",
            )
    with transaction.atomic():
        batch = _create_batch(
            resolved,
            parse_selection(selection),
            actor=actor,
            state=State.PENDING,
            chunk_size=chunk_size,
            live=not freeze,
        )
        paced.apply(batch)
        batch.save(update_fields=["not_before", "rate_limit", "canary_size", "canary_max_failure_rate"])
        return _launch(
            batch,
            actor,
            "batch.started",
            f"migrate {batch.total} instance(s) {resolved.source.version} -> {resolved.target.version}",
        )


def _draft(token: str) -> MigrationBatch:
    batch_id = parse_id(token, "selection_token", label="the selection token (a preview's number)")
    batch = MigrationBatch.objects.select_for_update().filter(pk=batch_id).first()
    if batch is None or batch.state != State.DRAFT:
        raise Conflict("this preview was already confirmed or discarded; preview again", field="selection_token")
    return batch


def _locked_batch(batch_id: Any) -> MigrationBatch:
    batch_id = parse_id(batch_id, "batch", label="batch id")
    batch = (
        MigrationBatch.objects.select_for_update(of=("self",))
        .select_related("workflow", "source_version")
        .filter(pk=batch_id)
        .first()
    )
    if batch is None:
        raise NotFound(f"no batch #{batch_id}", field="batch")
    return batch


@retry_on_deadlock()
def start_rollback(
    batch_id: int, *, actor: Any = None, force: bool = False, instance_ids: list[int] | None = None
) -> MigrationBatch:
    """Undo a migration batch from its snapshots, in a rollback batch of its own.

    Instances that moved on since their migration are reported as conflicts, unless `force`.
    """
    with transaction.atomic():
        parent = _locked_batch(batch_id)
        if parent.kind != MigrationBatch.Kind.MIGRATE:
            raise Conflict(f"batch #{parent.pk} is a rollback; roll back a migration batch", field="batch")
        if parent.state in (State.RUNNING, State.PENDING, State.DRAFT):
            raise Conflict(
                f"batch #{parent.pk} is {parent.state}; pause or cancel it, or let it finish, before rolling it back",
                field="batch",
            )
        undo = BatchItem.objects.filter(batch=parent, state=ItemState.SUCCEEDED)
        if instance_ids is not None:
            undo = undo.filter(instance_id__in=instance_ids)
        # Rolled back already, or waiting in a rollback still under way (two clicks on "Roll back"): never twice.
        taken = BatchItem.objects.filter(undoes__batch=parent, state__in=[ItemState.PENDING, ItemState.SUCCEEDED])
        undo = undo.exclude(pk__in=taken.values("undoes_id"))
        batch = MigrationBatch.objects.create(
            workflow=parent.workflow,
            kind=MigrationBatch.Kind.ROLLBACK,
            source_version=parent.target_version,
            target_version=parent.source_version,
            parent=parent,
            force=force,
            state=State.PENDING,
            created_by=_user(actor),
            chunk_size=parent.chunk_size,
            selection={"undo_batch": parent.pk, **({"ids": sorted(instance_ids)} if instance_ids else {})},
        )
        select_sql, params = undo.values_list("instance_id", "revision_after", "pk").query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {BatchItem._meta.db_table} (batch_id, instance_id, expected_revision, undoes_id, "
                "state, from_step, from_status, to_step, error) "
                f"SELECT %s, undo.instance_id, undo.revision_after, undo.pk, %s, '', '', '', '' "
                f"FROM ({select_sql}) AS undo",
                [batch.pk, ItemState.PENDING, *params],
            )
            batch.total = cursor.rowcount
        if not batch.total:
            under_way = taken.filter(state=ItemState.PENDING).values_list("batch_id", flat=True).first()
            if under_way:
                raise Conflict(
                    f"batch #{parent.pk} is already being rolled back by batch #{under_way}; resume or cancel that one",
                    field="batch",
                )
            raise Conflict(f"batch #{parent.pk} has no migrated instance left to roll back", field="batch")
        batch.save(update_fields=["total"])
        return _launch(
            batch,
            actor,
            "batch.rollback_started",
            f"roll back {batch.total} instance(s) of batch #{parent.pk}" + (" (forced)" if force else ""),
        )


@retry_on_deadlock()
def retry_failed(batch_id: int, *, actor: Any = None) -> MigrationBatch:
    """Migrate again only the instances that failed in a batch (e.g. after a migrator fix), as a child batch."""
    with transaction.atomic():
        parent = _locked_batch(batch_id)
        if parent.kind != MigrationBatch.Kind.MIGRATE or not parent.is_finished:
            raise Conflict(f"batch #{parent.pk} must be a finished migration to retry its failures", field="batch")
        # Retried already, or waiting in a retry still under way (two clicks on "Retry"): never twice.
        taken = BatchItem.objects.filter(
            batch__parent=parent,
            batch__kind=MigrationBatch.Kind.MIGRATE,
            state__in=[ItemState.PENDING, ItemState.SUCCEEDED],
        )
        failed_ids = list(
            BatchItem.objects.filter(batch=parent, state=ItemState.FAILED)
            .exclude(instance_id__in=taken.values("instance_id"))
            .values_list("instance_id", flat=True)
        )
        if not failed_ids:
            under_way = taken.filter(state=ItemState.PENDING).values_list("batch_id", flat=True).first()
            if under_way:
                raise Conflict(
                    f"batch #{parent.pk}'s failures are already being retried by batch #{under_way}; "
                    "resume or cancel that one",
                    field="batch",
                )
            raise Conflict(f"batch #{parent.pk} has no failed instance left to retry", field="batch")
        resolved = _resolve(parent.workflow.name, parent.source_version.version, parent.target_version.version)
        selection = {"statuses": list(MIGRATABLE_STATUSES), "ids": sorted(failed_ids)}
        batch = _create_batch(resolved, selection, actor=actor, state=State.PENDING, chunk_size=parent.chunk_size)
        batch.parent = parent
        batch.save(update_fields=["parent"])
        return _launch(
            batch, actor, "batch.retry_started", f"retry {batch.total} failed instance(s) of batch #{parent.pk}"
        )


def _process_inline(batch: MigrationBatch) -> MigrationBatch:
    """Single-instance batches run in the caller's request: the operator sees the outcome at once."""
    while process_chunk(batch.pk) == "more":
        pass
    batch.refresh_from_db()
    return batch


def migrate_instance(instance_id: Any, target: str, *, actor: Any = None) -> MigrationBatch:
    instance = _instance(instance_id)
    batch = start_migration(
        instance.workflow.name,
        instance.version.version,
        target,
        actor=actor,
        selection={"ids": [instance.pk], "statuses": [instance.status]},
    )
    return _process_inline(batch)


def rollback_instance(instance_id: Any, *, actor: Any = None, force: bool = False) -> MigrationBatch:
    """Undo the last migration of one instance."""
    instance = _instance(instance_id)
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
    return _process_inline(start_rollback(last.batch_id, actor=actor, force=force, instance_ids=[instance.pk]))


def _instance(instance_id: Any) -> WorkflowInstance:
    instance_id = parse_id(instance_id, "instance", label="instance id")
    instance = WorkflowInstance.objects.select_related("workflow", "version").filter(pk=instance_id).first()
    if instance is None:
        raise NotFound(f"no instance #{instance_id}", field="instance")
    if instance.status not in MIGRATABLE_STATUSES:
        raise Conflict(
            f"instance #{instance.pk} is {instance.status}; only in-flight or failed instances move", field="instance"
        )
    return instance


# --- pause, resume, cancel -----------------------------------------------------------------------
@retry_on_deadlock()
def pause_batch(batch_id: int, *, actor: Any = None) -> MigrationBatch:
    with transaction.atomic():
        batch = _locked_batch(batch_id)
        if batch.state != State.RUNNING:
            raise Conflict(f"batch #{batch.pk} is {batch.state}; only a running batch can be paused", field="batch")
        batch.state = State.PAUSED
        batch.save(update_fields=["state"])
        audit.record(
            "batch.paused",
            actor=actor,
            workflow=batch.workflow,
            batch=batch,
            message=f"paused after {batch.processed} of {batch.total}",
        )
    return batch


@retry_on_deadlock()
def resume_batch(batch_id: int, *, actor: Any = None) -> MigrationBatch:
    with transaction.atomic():
        batch = _locked_batch(batch_id)
        if batch.state != State.PAUSED:
            raise Conflict(f"batch #{batch.pk} is {batch.state}; only a paused batch can be resumed", field="batch")
        return _launch(batch, actor, "batch.resumed", f"resumed at {batch.processed} of {batch.total}")


@retry_on_deadlock()
def cancel_batch(batch_id: int, *, actor: Any = None) -> MigrationBatch:
    """Stop a batch: instances not yet processed are left alone and listed as skipped (cancelled)."""
    with transaction.atomic():
        batch = _locked_batch(batch_id)
        if batch.is_finished:
            raise Conflict(f"batch #{batch.pk} is already {batch.state}", field="batch")
        if batch.state == State.DRAFT:
            batch.items.all().delete()
            batch.total = 0
        if batch.selection_upto is not None:  # a live selection: what still matches is what is left
            skipped = _live_candidates(batch).count()
            batch.total = _settled_total(batch)["total"] + skipped
        else:
            skipped = batch.items.filter(state=ItemState.PENDING).update(
                state=ItemState.SKIPPED, error="cancelled before it was processed", finished_at=timezone.now()
            )
        batch.skipped += skipped
        batch.state = State.CANCELLED
        batch.finished_at = timezone.now()
        batch.save(update_fields=["state", "skipped", "total", "finished_at"])
        audit.record(
            "batch.cancelled",
            actor=actor,
            workflow=batch.workflow,
            batch=batch,
            message=f"cancelled; {skipped} instance(s) left unprocessed",
        )
    return batch


# --- processing -------------------------------------------------------------------------------------
_ITEM_FIELDS = (
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


class _InstanceRow:
    """An instance as a chunk reads and moves it: plain attributes, no model instance to build (a
    third of a chunk's Python time went to building BatchItem and WorkflowInstance objects)."""

    __slots__ = ("context", "current_step", "finished_at", "id", "read_revision", "revision", "status", "version_id")

    def __init__(self, id, version_id, context, current_step, status, revision):
        self.id, self.version_id, self.context = id, version_id, JSONText(context)
        self.current_step, self.status = current_step, status
        self.revision = self.read_revision = revision  # the write is checked against the revision read


class _ItemRow:
    """A pending item with its instance as read, and what processing it decided (written back by
    bulk_update_rows)."""

    __slots__ = (
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

    def __init__(self, id, instance_id, expected_revision, instance: _InstanceRow | None, undone: tuple | None):
        self.id, self.instance_id, self.expected_revision = id, instance_id, expected_revision
        self.instance = instance  # None: the instance no longer exists
        # A rollback item: the snapshot it restores (version, step, status, context of the item it undoes).
        self.undone = undone
        self.state, self.error = ItemState.PENDING, ""
        self.from_version_id = self.to_version_id = self.revision_after = None
        self.from_step = self.from_status = self.to_step = ""
        self.from_context = None


_ITEM_TABLE, _INSTANCE_TABLE = BatchItem._meta.db_table, WorkflowInstance._meta.db_table


def _claim_items(batch: MigrationBatch, limit: int) -> list[_ItemRow]:
    """The next pending items no other chunk holds (FOR UPDATE SKIP LOCKED), in id order, each with
    its instance as it is now and, for a rollback, the snapshot it restores.

    Three plain queries, not one join: joined, the planner hashes every instance for a chunk of 1,000.
    """
    # SQLite (the demo) has no row locks; its chunks run one at a time.
    locking = " FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(
            # The state as a literal: the partial index batchitem_pending is chosen at planning time.
            f"SELECT id, instance_id, expected_revision, undoes_id FROM {_ITEM_TABLE} "
            f"WHERE batch_id = %s AND state = '{ItemState.PENDING}' ORDER BY id LIMIT %s{locking}",
            [batch.pk, limit],
        )
        claimed = cursor.fetchall()
        instances = _rows_by_id(
            cursor,
            "id, version_id, CAST(context AS text), current_step, status, revision",
            _INSTANCE_TABLE,
            [row[1] for row in claimed],
        )
        undone = {}
        if batch.kind == MigrationBatch.Kind.ROLLBACK:
            undone = _rows_by_id(
                cursor,
                "id, from_version_id, from_step, from_status, CAST(from_context AS text)",
                _ITEM_TABLE,
                [row[3] for row in claimed],
            )
    items = []
    for item_id, instance_id, expected_revision, undoes_id in claimed:
        instance = instances.get(instance_id)
        snapshot = undone.get(undoes_id)
        items.append(
            _ItemRow(
                item_id,
                instance_id,
                expected_revision,
                _InstanceRow(*instance) if instance else None,
                (*snapshot[1:4], JSONText(snapshot[4])) if snapshot else None,
            )
        )
    return items


def _rows_by_id(cursor, columns: str, table: str, ids: list[int]) -> dict[int, tuple]:
    if connection.vendor == "postgresql":
        cursor.execute(f"SELECT {columns} FROM {table} WHERE id = ANY(%s)", [ids])
    else:
        cursor.execute(f"SELECT {columns} FROM {table} WHERE id IN ({', '.join(['%s'] * len(ids))})", ids)
    return {row[0]: row for row in cursor.fetchall()}


def _chunk_limit(batch: MigrationBatch) -> int:
    limit = batch.chunk_size
    if batch.canary_size and batch.processed < batch.canary_size:
        limit = min(limit, batch.canary_size - batch.processed)
    if batch.rate_limit:
        limit = min(limit, batch.rate_limit)  # at most a second's worth per chunk
    return limit


def _batch_for_chunk(batch_id: int) -> MigrationBatch | None:
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
    batch = next(iter(rows), None)
    if batch is None or not postgresql or not _runs_serially(batch):
        return batch
    locked = MigrationBatch.objects.select_for_update(no_key=True).get(pk=batch_id)  # re-read once it is ours
    locked.workflow_name, locked.source_label, locked.target_label = (
        batch.workflow_name,
        batch.source_label,
        batch.target_label,
    )
    return locked


_COUNTERS = {
    ItemState.SUCCEEDED: "succeeded",
    ItemState.FAILED: "failed",
    ItemState.SKIPPED: "skipped",
    ItemState.CONFLICT: "conflicts",
}


def process_batch(batch_id: int, after: int = 0) -> str:
    """What a chunk task runs: chunks of the batch one after another, each in its own transaction,
    with no broker round trip in between, until WORKFLOWS_BATCH_CHAIN_SECONDS is spent; the last
    one sends the task that carries on. A pause, cancel or canary hold takes effect at the next
    chunk, as between tasks."""
    deadline = time.monotonic() + settings.WORKFLOWS_BATCH_CHAIN_SECONDS
    while True:
        last = time.monotonic() >= deadline
        outcome, after = _process_chunk(batch_id, timezone.now(), hand_on=last, after=after)
        if outcome != "more" or last:
            return outcome


def process_chunk(batch_id: int, *, now=None, hand_on: bool = True, after: int = 0) -> str:
    """Process the next chunk: pending items, or for a live selection the next instances after
    `after` that match it.

    Returns 'more', 'finished', 'scheduled' (not yet time), 'canary paused', 'busy' (what is left
    is being processed by the batch's other chunks), 'early' (a second chain of a rate-limited
    batch, which ends there), or the batch state it found. With
    `hand_on` (a task's last chunk) the next chunk is sent as a new task; without it the caller
    goes on to it, unless a rate limit makes it wait: then it is sent, delayed, and 'handed on'
    returned.
    """
    return _process_chunk(batch_id, now or timezone.now(), hand_on=hand_on, after=after)[0]


def _process_chunk(batch_id: int, now, *, hand_on: bool, after: int) -> tuple[str, int]:
    """process_chunk, and where a live selection's chain got to."""
    started = time.monotonic()
    with transaction.atomic():
        batch = _batch_for_chunk(batch_id)
        if batch is None or batch.state != State.RUNNING:
            return (batch.state if batch else "gone"), after
        if batch.not_before and now < batch.not_before:
            _enqueue_chunk(batch.pk, (batch.not_before - now).total_seconds(), after)
            return "scheduled", after
        if batch.rate_limit and batch.next_chunk_at and now < batch.next_chunk_at - RATE_SLACK:
            # A second chain of a rate-limited batch (a redelivered task, or one re-sent by recovery)
            # would double its rate: the chain that set next_chunk_at carries the batch on alone.
            return "early", after
        processed_before = batch.processed
        live = batch.selection_upto is not None
        limit = _chunk_limit(batch)
        if live:
            items = _take_instances(batch, limit, after)
            if not items and after:
                items = _take_instances(batch, limit, 0)  # back for any a failed chunk left behind
            after = items[-1].instance_id if items else 0
        else:
            items = _claim_items(batch, limit)
        if not items:
            if _work_left(batch):
                return "busy", after  # whichever chunk holds it sends the next one
            _finish(batch, now)
            return "finished", after
        stamp = now.isoformat()  # as text once: the rows' timestamps go to PostgreSQL as JSON text anyway
        if batch.kind == MigrationBatch.Kind.MIGRATE:
            changed = _migrate_items(batch, items, stamp)
        else:
            changed = _rollback_items(batch, items, stamp)
        changed, items = _write_instances(changed, items, stamp)
        if live:
            _insert_items_taken(batch, items, stamp)
        else:
            bulk_update_rows(BatchItem, items, _ITEM_FIELDS, same_for_all={"finished_at": stamp})
        # A rate-limited batch marks when its next chunk is due (see the "early" check above).
        next_chunk_at = now + timedelta(seconds=len(items) / batch.rate_limit) if batch.rate_limit else None
        _count_outcomes(batch, Counter(_COUNTERS[item.state] for item in items), now, next_chunk_at)
        enqueue_steps((i.id, i.revision) for i in changed if i.status == InstanceStatus.PENDING)
        for version_id in {item.from_version_id for item in items if item.state == ItemState.SUCCEEDED}:
            lifecycle.mark_drained_when_empty(version_id)
        successors = 1
        if batch.canary_size and processed_before < batch.canary_size <= batch.processed:
            if _canary_holds(batch):
                return "canary paused", after
            successors = _chains(batch)  # past the canary: the batch may fan out
        # Under a rate limit the next chunk waits out the rest of the second(s) this one was allowed.
        wait = len(items) / batch.rate_limit - (time.monotonic() - started) if batch.rate_limit else 0
        goes_on = not hand_on and not batch.rate_limit  # the caller carries one chain on itself
        for _ in range(successors - goes_on):
            _enqueue_chunk(batch.pk, wait, after)
    return ("more" if hand_on or goes_on else "handed on"), after


def _live_candidates(batch: MigrationBatch):
    """A live selection's instances not yet taken: matching it now, up to its bound, with no item."""
    # OFFSET 0 keeps "no item" a probe of each matching row: left to itself PostgreSQL makes it a
    # merge anti-join that reads the batch's items from the first instance on, for every chunk.
    # (SQLite, the demo, takes no OFFSET without a LIMIT, and needs no such hint.)
    probe_only = " OFFSET 0" if connection.vendor == "postgresql" else ""
    untaken = RawSQL(
        f"NOT EXISTS (SELECT 1 FROM {_ITEM_TABLE} taken WHERE taken.batch_id = %s "
        f"AND taken.instance_id = {_INSTANCE_TABLE}.id{probe_only})",
        [batch.pk],
        output_field=BooleanField(),
    )
    return _selected_instances(batch.source_version_id, batch.selection).filter(untaken, pk__lte=batch.selection_upto)


def _take_instances(batch: MigrationBatch, limit: int, after: int) -> list[_ItemRow]:
    """The next instances of a live selection after `after`, in id order, locked (FOR UPDATE SKIP
    LOCKED: the batch's other chunks take the next ones), each as an item to write."""
    rows = (
        _live_candidates(batch)
        .filter(pk__gt=after)
        .select_for_update(skip_locked=True, of=("self",))
        .annotate(context_text=Cast("context", output_field=TextField()))
        .values_list("pk", "version_id", "context_text", "current_step", "status", "revision")[:limit]
    )
    return [_ItemRow(None, row[0], row[5], _InstanceRow(*row), None) for row in rows]


def _work_left(batch: MigrationBatch) -> bool:
    """Whether anything is left to process, held by another chunk right now (no locks taken)."""
    if batch.selection_upto is not None:
        return _live_candidates(batch).exists()
    return BatchItem.objects.filter(batch=batch, state=ItemState.PENDING).exists()


def _insert_items_taken(batch: MigrationBatch, items: list[_ItemRow], stamp: str) -> None:
    """A live selection's items, written once, as processed (a frozen selection's are updated)."""
    bulk_insert_values(
        BatchItem,
        items,
        ("instance_id", "expected_revision", *_ITEM_FIELDS),
        same_for_all={"batch_id": batch.pk, "finished_at": stamp},
    )


def _count_outcomes(batch: MigrationBatch, outcomes: Counter, now, next_chunk_at) -> None:
    """Add a chunk's outcomes to the batch's counters, record its progress time and when its next
    chunk is due, and read the totals back, in one statement.

    Increments, not the values read at the start: the batch's other chunks add theirs too.
    """
    names = list(_COUNTERS.values())
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


def _canary_holds(batch: MigrationBatch) -> bool:
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


def _finish(batch: MigrationBatch, now) -> None:
    """Mark the batch done, once: two chunks may find nothing left at the same moment."""
    with_failures = Q(failed__gt=0) | Q(conflicts__gt=0)
    finished = MigrationBatch.objects.filter(pk=batch.pk, state=State.RUNNING).update(
        state=Case(When(with_failures, then=Value(State.COMPLETED_WITH_FAILURES)), default=Value(State.COMPLETED)),
        finished_at=now,
        **_settled_total(batch),
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


def _settled_total(batch: MigrationBatch) -> dict[str, int]:
    """A live selection's total, once nothing more will be taken: the instances it took (those
    that no longer matched when reached are not counted). Empty for a frozen selection."""
    if batch.selection_upto is None:
        return {}
    return {"total": BatchItem.objects.filter(batch_id=batch.pk).count()}


def _changed_since_selection(item: _ItemRow, instance: _InstanceRow | None, version_id: int) -> str:
    if instance is None:
        return "instance no longer exists"
    if instance.revision != item.expected_revision:
        return (
            f"changed since preview: revision {item.expected_revision} -> {instance.revision} (now {instance.status})"
        )
    if instance.version_id != version_id:
        return "changed since preview: it is on another version now"
    return ""


def _resumed_status(status: str, target_has_code: bool) -> str:
    """Where an instance goes after moving: a step in flight or failed re-runs on the new version."""
    if status == InstanceStatus.WAITING:
        return InstanceStatus.WAITING
    if status == InstanceStatus.PARKED and not target_has_code:
        return InstanceStatus.PARKED
    return InstanceStatus.PENDING


def _move(item: _ItemRow, instance: _InstanceRow, version_id: int, context, step: str, status: str, now: str) -> None:
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


def _migrate_items(batch, items: list[_ItemRow], now: str) -> list[_InstanceRow]:
    workflow_def = get_registry().get(batch.workflow_name)
    plan = plan_migration(workflow_def, batch.source_label, batch.target_label)
    target_has_code = get_registry().find_version(batch.workflow_name, batch.target_label) is not None
    changed = []
    for item in items:
        instance = item.instance
        reason = _changed_since_selection(item, instance, batch.source_version_id)
        if reason:
            item.state, item.error = ItemState.SKIPPED, reason
            continue
        try:
            context, step = plan.apply_json(instance.context, instance.current_step or None)
        except MigrationFailed as failure:
            item.state, item.error = ItemState.FAILED, failure.message
            continue
        _move(
            item,
            instance,
            batch.target_version_id,
            JSONText(context),
            step or "",
            _resumed_status(instance.status, target_has_code),
            now,
        )
        changed.append(instance)
    return changed


def _rollback_items(batch, items: list[_ItemRow], now: str) -> list[_InstanceRow]:
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
        _move(
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


_INSTANCE_FIELDS = ("version", "context", "current_step", "status", "finished_at", "revision")


def _write_instances(
    changed: list[_InstanceRow], items: list[_ItemRow], now: str
) -> tuple[list[_InstanceRow], list[_ItemRow]]:
    """One UPDATE for the whole chunk, each row only at the revision read (in id order, the order
    every chunk locks rows in). Returns the instances written and the items decided: the item of an
    instance that changed since the read stays pending, for the next chunk to decide afresh."""
    changed.sort(key=lambda instance: instance.id)
    written = bulk_update_rows(
        WorkflowInstance,
        changed,
        _INSTANCE_FIELDS,
        # A moved instance starts afresh on its new version: no reason, attempt or lease carried over.
        same_for_all={"status_reason": "", "attempt": 0, "lease_expires_at": None, "updated_at": now},
        unless_changed=("revision", "read_revision"),
    )
    if len(written) == len(changed):
        return changed, items
    lost = {instance.id for instance in changed} - written
    return (
        [instance for instance in changed if instance.id in written],
        [item for item in items if item.instance_id not in lost],
    )


def resume_stalled_batches(*, stalled_for: timedelta | None = None) -> int:
    """Re-send the next chunk of running batches that made no progress for a while (a worker died with it)."""
    if stalled_for is None:
        stalled_for = timedelta(seconds=settings.WORKFLOWS_BATCH_STALL_SECONDS)
    stalled = MigrationBatch.objects.filter(state=State.RUNNING, progressed_at__lt=timezone.now() - stalled_for)
    for batch in stalled:
        for _ in range(_chains(batch)):
            _enqueue_chunk(batch.pk)
    return len(stalled)


def discard_stale_drafts(*, older_than: timedelta | None = None) -> int:
    """Delete previews never confirmed (draft batches and their frozen items) after a while.

    A preview freezes its selection as items, one row per instance: unconfirmed previews of large
    versions would otherwise pile up. The operator who comes back later previews again.
    """
    if older_than is None:
        older_than = timedelta(hours=settings.WORKFLOWS_DRAFT_HOURS)
    with transaction.atomic():
        # Locked and skipped if a confirmation holds one right now: that draft is being launched.
        stale = list(
            MigrationBatch.objects.select_for_update(skip_locked=True)
            .filter(state=State.DRAFT, created_at__lt=timezone.now() - older_than)
            .values_list("pk", "workflow_id")
        )
        if not stale:
            return 0
        ids = [pk for pk, _ in stale]
        BatchItem.objects.filter(batch_id__in=ids).delete()
        MigrationBatch.objects.filter(pk__in=ids).delete()
        for workflow_id in sorted({workflow_id for _, workflow_id in stale}):
            discarded = sorted(pk for pk, owner in stale if owner == workflow_id)
            audit.record(
                "batch.previews_discarded",
                actor="system:batches",
                workflow_id=workflow_id,
                message=f"discarded {len(discarded)} preview(s) not confirmed within {older_than}",
                details={"batches": discarded},
            )
    return len(stale)
