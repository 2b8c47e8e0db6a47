"""Batch commands and their state machine: preview, start, rollback, retry, pause, resume and cancel.

Each takes its batch under a row lock (or creates it) in one transaction, checks what the batch's
state allows, audits the action with its actor and sends the first chunk only after commit. A
batch over more than WORKFLOWS_APPROVAL_THRESHOLD instances waits for a second user's approval
(begin; approve and reject: approval.py) and one over a source version another unfinished batch
holds waits its turn (queueing.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Max, QuerySet
from django.utils import timezone

from workflows_admin.engine import MigrationPlan, PlanningError, StepMapError, dry_run, plan_migration

from ...models import BatchItem, MigrationBatch, WorkflowInstance, WorkflowVersion
from ...rules import (
    approval_expires_at,
    approval_needed,
    approval_threshold,
    can_cancel,
    can_pause,
    can_resume,
    can_retry_failed,
    can_rollback,
    needs_approval,
)
from ...runtime import get_registry
from .. import audit, lifecycle
from ..audit import Actor
from ..errors import Conflict, InvalidInput, NotFound
from ..lookup import row_by_id
from ..numbers import parse_id
from ..retries import retry_on_deadlock
from .executor import clear_move_pending, settled_total
from .queueing import launch_next, start_or_queue
from .rows import live_candidates
from .scheduling import start_chains
from .validation import (
    MIGRATABLE_STATUSES,
    Pacing,
    check_chunk_size,
    parse_selection,
    parse_step_map,
    selected_instances,
)

State = MigrationBatch.State
ItemState = BatchItem.State
PACING_FIELDS = (
    "not_before",
    "rate_limit",
    "canary_size",
    "canary_max_failure_rate",
    "max_wait_seconds",
    "on_max_wait",
)


@dataclass
class Resolved:
    source: WorkflowVersion
    target: WorkflowVersion
    plan: MigrationPlan


def resolve(workflow: str, *, source: str, target: str, step_map: Any = None) -> Resolved:
    source_row = lifecycle.get_version(workflow, source)
    try:
        target_label = lifecycle.get_version(workflow, target)
    except (InvalidInput, NotFound) as exc:  # the workflow was found above: what is wrong is the target
        raise type(exc)(exc.message, field="target") from None
    definition = get_registry().get(workflow) if workflow in get_registry() else None
    if definition is None:
        raise Conflict(f"workflow '{workflow}' has no code in this deployment; deploy it to migrate", field="workflow")
    try:
        plan = plan_migration(definition, source_row.version, target_label.version, parse_step_map(step_map))
    except StepMapError as exc:
        raise InvalidInput(str(exc), field="step_map") from None
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
    *,
    source: str,
    target: str,
    selection: dict[str, Any] | None = None,
    sample_limit: int = 5000,
    freeze: bool = False,
    actor: Actor = None,
    step_map: Any = None,
) -> MigrationPreview:
    """Dry-run the path on the selected instances' contexts (a sample of `sample_limit` for larger sets).

    Writes nothing, unless `freeze`: then the selection (ids and revisions) is kept in a draft batch
    whose id is the selection token, so confirming migrates exactly what was shown. `step_map`
    overrides where instances at a source step resume on the target (the draft records it).
    """
    resolved = resolve(workflow, source=source, target=target, step_map=step_map)
    parsed = parse_selection(selection)
    columns = ("pk", "context", "current_step")
    token = None
    # One set for the count, the dry-run and the batch: instances finish while a preview runs, so
    # the frozen selection is written first and the dry-run reads exactly its instances.
    if freeze:
        draft = create_batch(resolved, parsed, actor=actor, state=State.DRAFT, chunk_size=500)
        token, selected = str(draft.pk), draft.total
        frozen = WorkflowInstance.objects.filter(batch_items__batch=draft).order_by("pk")
        sample = list(frozen.values_list(*columns)[:sample_limit])
    else:
        instances = selected_instances(resolved.source, parsed)
        sample = list(instances.values_list(*columns)[: sample_limit + 1])
        if not sample:
            raise InvalidInput(f"no instance of {resolved.source} matches the selection {parsed}", field="selection")
        # Counted apart only when there is more than the sample; then the report says it sampled.
        selected = len(sample) if len(sample) <= sample_limit else instances.count()
        sample = sample[:sample_limit]
    report = dry_run(resolved.plan, sample).as_dict()
    report.update(
        selected=selected,
        sampled=selected > sample_limit,
        needs_approval=approval_needed(selected),
        approval_threshold=approval_threshold(),
    )
    return MigrationPreview(resolved.plan, report, selected, token)


def insert_items(batch: MigrationBatch, instances: QuerySet[WorkflowInstance]) -> int:
    """Freeze the selection: one pending item per instance with its current revision, in one INSERT ... SELECT."""
    select_sql, params = instances.values_list("pk", "revision").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {BatchItem._meta.db_table} "
            "(batch_id, instance_id, expected_revision, state, from_step, from_status, to_step, error) "
            f"SELECT %s, selected.pk, selected.revision, %s, '', '', '', '' FROM ({select_sql}) AS selected",
            [batch.pk, ItemState.PENDING, *params],
        )
        inserted: int = cursor.rowcount
        return inserted


def create_batch(
    resolved: Resolved, selection: dict[str, Any], *, actor: Actor, state: str, chunk_size: int, live: bool = False
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
            created_by=audit.actor_user(actor),
            chunk_size=check_chunk_size(chunk_size),
        )
        instances = selected_instances(resolved.source, selection)
        if live:
            found = instances.order_by().aggregate(total=Count("pk"), upto=Max("pk"))
            batch.total, batch.selection_upto = found["total"], found["upto"]
        else:
            batch.total = insert_items(batch, instances)
        if not batch.total:
            raise InvalidInput(f"no instance of {resolved.source} matches the selection {selection}", field="selection")
        batch.save(update_fields=["total", "selection_upto"])
    return batch


def launch(batch: MigrationBatch, actor: Actor, action: str, message: str) -> MigrationBatch:
    """Mark a batch running, audit it and send its first chunk after commit (caller holds a transaction)."""
    now = timezone.now()
    batch.state = State.RUNNING
    batch.started_at = batch.started_at or now
    batch.progressed_at = now
    batch.next_chunk_at = None  # the chain sent now is the batch's only one
    batch.save(update_fields=["state", "started_at", "progressed_at", "next_chunk_at"])
    override = batch.plan.get("step_map_override", {})
    audit.record(
        action,
        actor=actor,
        workflow=batch.workflow,
        version=batch.source_version,
        batch=batch,
        message=message + "".join(f"; {step} resumes on {to} (step map override)" for step, to in override.items()),
        details={
            "total": batch.total,
            "selection": batch.selection,
            "step_map_override": override,
            # Whether a running step is waited for, and what happens after max_wait (interrupt is named).
            "max_wait_seconds": batch.max_wait_seconds,
            "on_max_wait": batch.on_max_wait,
        },
    )
    start_chains(batch)
    return batch


def launch_action(batch: MigrationBatch) -> str:
    """The audit action a batch's start is recorded as, however late it starts (approved, dequeued)."""
    if batch.kind == MigrationBatch.Kind.ROLLBACK:
        return "batch.rollback_started"
    return "batch.retry_started" if batch.parent_id else "batch.started"


def begin(batch: MigrationBatch, actor: Actor, action: str, message: str, *, queue: bool = True) -> MigrationBatch:
    """A new batch (or a confirmed preview) starts: it awaits approval if it is over the threshold
    (its count now decides, for a live selection too), else it runs or queues behind the batch over
    its source version (`queue=False`: it runs at once, for a one-instance move done in the request)."""
    if needs_approval(batch):
        return request_approval(batch, actor, message)
    if not queue:
        return launch(batch, actor, action, message)
    return start_or_queue(batch, actor, action, message)


def request_approval(batch: MigrationBatch, actor: Actor, message: str) -> MigrationBatch:
    batch.state = State.AWAITING_APPROVAL
    batch.requested_by = audit.actor_label(actor)
    batch.save(update_fields=["state", "requested_by"])
    expires = approval_expires_at(batch)
    audit.record(
        "batch.approval_requested",
        actor=actor,
        workflow=batch.workflow,
        version=batch.source_version,
        batch=batch,
        message=f"{message}: over the approval threshold of {approval_threshold()} instances, it waits for a "
        f"second user's approval until {expires:%Y-%m-%d %H:%M} UTC",
        details={
            "total": batch.total,
            "threshold": approval_threshold(),
            "expires_at": expires.isoformat(),
            "selection": batch.selection,
        },
    )
    return batch


def start_migration(
    workflow: str,
    *,
    source: str,
    target: str,
    selection: dict[str, Any] | None = None,
    actor: Actor = None,
    chunk_size: int = 500,
    selection_token: str | None = None,
    pacing: dict[str, Any] | None = None,
    freeze: bool = False,
    step_map: Any = None,
    queue: bool = True,
) -> MigrationBatch:
    """Start migrating the selected instances; with a preview's token, exactly the previewed set.

    Without one the selection is live: the instances that still match it when the chunks reach
    them, up to the newest that matches now; it starts at once, however many there are. `freeze`
    writes the selection down now instead (a pending item each), for a caller that must see it.

    `pacing` may hold not_before (a scheduled start), rate_limit (instances a second) and canary_size
    with canary_max_failure_rate (migrate that many first; pause unless their failure share is at most it),
    max_wait (seconds a running step is waited for; by default until it ends) with on_max_wait (skip,
    the default, or interrupt). An instance whose step is running moves when the step ends.
    `step_map` overrides, per source step, the target step its instances resume on; every chunk
    plans with it (it is in the batch's plan). With a token, the preview's override holds.

    Over WORKFLOWS_APPROVAL_THRESHOLD instances it awaits approval; with another batch over the
    source version unfinished it is queued (unless `queue` is false: see begin).
    """
    resolved = resolve(workflow, source=source, target=target, step_map=step_map)
    paced = Pacing.parse(pacing)
    if selection_token:
        with transaction.atomic():
            batch = draft(selection_token)
            if (batch.source_version_id, batch.target_version_id) != (resolved.source.pk, resolved.target.pk):
                raise Conflict("the preview was for other versions; preview again", field="selection_token")
            if step_map and resolved.plan.step_map_override != batch.plan.get("step_map_override", {}):
                raise Conflict("the preview had another step mapping; preview again", field="step_map")
            batch.created_by = batch.created_by or audit.actor_user(actor)
            batch.chunk_size = check_chunk_size(chunk_size)
            paced.apply(batch)
            batch.save(update_fields=["created_by", "chunk_size", *PACING_FIELDS])
            return begin(
                batch,
                actor,
                "batch.started",
                f"migrate {batch.total} previewed instance(s) {resolved.source.version} -> {resolved.target.version}",
            )
    with transaction.atomic():
        batch = create_batch(
            resolved,
            parse_selection(selection),
            actor=actor,
            state=State.PENDING,
            chunk_size=chunk_size,
            live=not freeze,
        )
        paced.apply(batch)
        batch.save(update_fields=[*PACING_FIELDS])
        return begin(
            batch,
            actor,
            "batch.started",
            f"migrate {batch.total} instance(s) {resolved.source.version} -> {resolved.target.version}",
            queue=queue,
        )


def draft(token: str) -> MigrationBatch:
    batch_id = parse_id(token, "selection_token", label="the selection token (a preview's number)")
    batch = MigrationBatch.objects.select_for_update().filter(pk=batch_id).first()
    if batch is None or batch.state != State.DRAFT:
        raise Conflict("this preview was already confirmed or discarded; preview again", field="selection_token")
    return batch


def locked_batch(batch_id: Any) -> MigrationBatch:
    rows = MigrationBatch.objects.select_for_update(of=("self",)).select_related("workflow", "source_version")
    return row_by_id(rows, batch_id, "batch")


@retry_on_deadlock()
def start_rollback(
    batch_id: int,
    *,
    actor: Actor = None,
    force: bool = False,
    reopen_finished: bool = False,
    instance_ids: list[int] | None = None,
    queue: bool = True,
) -> MigrationBatch:
    """Undo a migration batch from its snapshots, in a rollback batch of its own.

    Instances that moved on since their migration are reported as conflicts, unless `force`.
    Instances that completed or were cancelled since are skipped, unless `reopen_finished`. A
    rollback onto a retired version is refused: it takes no instances. Approval and queue: as
    start_migration.
    """
    with transaction.atomic():
        parent = locked_batch(batch_id)
        can_rollback(parent).require(field="batch")
        undo = BatchItem.objects.filter(batch=parent, state=ItemState.SUCCEEDED)
        if instance_ids is not None:
            undo = undo.filter(instance_id__in=instance_ids)
        # Rolled back already, or waiting in a rollback still under way (two clicks on "Roll back"): never twice.
        taken = BatchItem.objects.filter(undoes__batch=parent, state__in=[*BatchItem.UNDECIDED, ItemState.SUCCEEDED])
        undo = undo.exclude(pk__in=taken.values("undoes_id"))
        batch = MigrationBatch.objects.create(
            workflow=parent.workflow,
            kind=MigrationBatch.Kind.ROLLBACK,
            source_version=parent.target_version,
            target_version=parent.source_version,
            parent=parent,
            force=force,
            reopen_finished=reopen_finished,
            state=State.PENDING,
            created_by=audit.actor_user(actor),
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
            under_way = taken.filter(state__in=BatchItem.UNDECIDED).values_list("batch_id", flat=True).first()
            if under_way:
                raise Conflict(
                    f"batch #{parent.pk} is already being rolled back by batch #{under_way}; resume or cancel that one",
                    field="batch",
                )
            raise Conflict(f"batch #{parent.pk} has no migrated instance left to roll back", field="batch")
        batch.save(update_fields=["total"])
        return begin(
            batch,
            actor,
            "batch.rollback_started",
            f"roll back {batch.total} instance(s) of batch #{parent.pk}"
            + (" (forced)" if force else "")
            + (" (reopening finished instances)" if reopen_finished else ""),
            queue=queue,
        )


@retry_on_deadlock()
def retry_failed(batch_id: int, *, actor: Actor = None) -> MigrationBatch:
    """Migrate again only the instances that failed in a batch (e.g. after a migrator fix), as a child batch."""
    with transaction.atomic():
        parent = locked_batch(batch_id)
        can_retry_failed(parent).require(field="batch")
        # Retried already, or waiting in a retry still under way (two clicks on "Retry"): never twice.
        taken = BatchItem.objects.filter(
            batch__parent=parent,
            batch__kind=MigrationBatch.Kind.MIGRATE,
            state__in=[*BatchItem.UNDECIDED, ItemState.SUCCEEDED],
        )
        failed_ids = list(
            BatchItem.objects.filter(batch=parent, state=ItemState.FAILED)
            .exclude(instance_id__in=taken.values("instance_id"))
            .values_list("instance_id", flat=True)
        )
        if not failed_ids:
            under_way = taken.filter(state__in=BatchItem.UNDECIDED).values_list("batch_id", flat=True).first()
            if under_way:
                raise Conflict(
                    f"batch #{parent.pk}'s failures are already being retried by batch #{under_way}; "
                    "resume or cancel that one",
                    field="batch",
                )
            raise Conflict(f"batch #{parent.pk} has no failed instance left to retry", field="batch")
        source, target = parent.source_version, parent.target_version
        assert source is not None and target is not None  # a migration (can_retry_failed checked) has both
        resolved = resolve(
            parent.workflow.name,
            source=source.version,
            target=target.version,
            step_map=parent.plan.get("step_map_override"),  # the failures move as the batch would have moved them
        )
        selection = {"statuses": list(MIGRATABLE_STATUSES), "ids": sorted(failed_ids)}
        batch = create_batch(resolved, selection, actor=actor, state=State.PENDING, chunk_size=parent.chunk_size)
        batch.parent = parent
        batch.save(update_fields=["parent"])
        return begin(
            batch, actor, "batch.retry_started", f"retry {batch.total} failed instance(s) of batch #{parent.pk}"
        )


# --- pause, resume, cancel -----------------------------------------------------------------------
@retry_on_deadlock()
def pause_batch(batch_id: int, *, actor: Actor = None) -> MigrationBatch:
    with transaction.atomic():
        batch = locked_batch(batch_id)
        can_pause(batch).require(field="batch")
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
def resume_batch(batch_id: int, *, actor: Actor = None) -> MigrationBatch:
    with transaction.atomic():
        batch = locked_batch(batch_id)
        can_resume(batch).require(field="batch")
        return launch(batch, actor, "batch.resumed", f"resumed at {batch.processed} of {batch.total}")


@retry_on_deadlock()
def cancel_batch(batch_id: int, *, actor: Actor = None) -> MigrationBatch:
    """Stop a batch: instances not yet processed are left alone and listed as skipped (cancelled).
    A batch that held its source version's place hands it to the next queued batch, which starts."""
    with transaction.atomic():
        batch = locked_batch(batch_id)
        can_cancel(batch).require(field="batch")
        held_place = batch.state in MigrationBatch.ACTIVE_STATES
        skipped, waiting = stop_batch(batch, "cancelled before it was processed")
        audit.record(
            "batch.cancelled",
            actor=actor,
            workflow=batch.workflow,
            batch=batch,
            message=f"cancelled; {skipped} instance(s) left unprocessed"
            + (f", {waiting} of them waiting for a running step" if waiting else ""),
        )
        if held_place:
            launch_next(batch.source_version_id)
    return batch


def stop_batch(batch: MigrationBatch, why: str) -> tuple[int, int]:
    """End a locked batch as cancelled (cancel, a rejected or expired approval): what it has not
    processed is skipped with `why`. Returns the instances skipped and, of them, those whose
    move waited for a running step."""
    if batch.state == State.DRAFT:
        batch.items.all().delete()
        batch.total = 0
    if batch.selection_upto is not None:  # a live selection: what still matches is what is left
        skipped = live_candidates(batch).count()
        batch.total = settled_total(batch)["total"] + skipped
    else:
        skipped = batch.items.filter(state=ItemState.PENDING).update(
            state=ItemState.SKIPPED, error=why, finished_at=timezone.now()
        )
    # Moves still waiting for a running step are dropped: the step ends on its own version.
    waiting = list(batch.items.filter(state=ItemState.DEFERRED).values_list("instance_id", flat=True))
    batch.items.filter(state=ItemState.DEFERRED).update(
        state=ItemState.SKIPPED, error="cancelled while waiting for its running step", finished_at=timezone.now()
    )
    clear_move_pending(waiting)
    batch.skipped += skipped + len(waiting)
    batch.deferred = 0
    batch.state = State.CANCELLED
    batch.finished_at = timezone.now()
    batch.save(update_fields=["state", "skipped", "deferred", "total", "finished_at"])
    return skipped + len(waiting), len(waiting)
