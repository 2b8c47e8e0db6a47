"""Selectors for the filtered lists the pages, the API and the CLI show, newest first.

Each takes filters already read from the request (None: not applied) and returns a lazy queryset,
so the caller pages it (a paginator, the API's cursor) and a filter is never spelled twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Count, Model, QuerySet

from .models import (
    AuditEvent,
    InFlightSample,
    MigrationBatch,
    Rollout,
    RolloutEvent,
    StepRun,
    Workflow,
    WorkflowInstance,
    WorkflowVersion,
)

# The joins every list of a kind needs for its rows and their links.
BATCH_JOINS = ("workflow", "source_version", "target_version")
ROLLOUT_JOINS = ("workflow", "target_version", "previous_version")
INSTANCE_JOINS = ("workflow", "version")


def _where[M: Model](rows: QuerySet[M], **lookups: Any) -> QuerySet[M]:
    """`rows` filtered on each lookup given, newest first; a None lookup is not applied."""
    return rows.filter(**{name: value for name, value in lookups.items() if value is not None}).order_by("-pk")


def batches(
    *, workflow: str | None = None, state: str | None = None, kind: str | None = None
) -> QuerySet[MigrationBatch]:
    """Started batches (previews apart)."""
    rows = MigrationBatch.objects.select_related(*BATCH_JOINS).exclude(state=MigrationBatch.State.DRAFT)
    return _where(rows, workflow__name=workflow, state=state, kind=kind)


def open_batches() -> QuerySet[MigrationBatch]:
    """Batches started and not finished."""
    return MigrationBatch.objects.exclude(state__in=[*MigrationBatch.FINISHED_STATES, MigrationBatch.State.DRAFT])


def batch_children(batch: MigrationBatch) -> QuerySet[MigrationBatch]:
    """The retries and rollbacks started from a batch."""
    return batch.children.order_by("-pk")


def rollout_events(rollout: Rollout) -> QuerySet[RolloutEvent]:
    """A rollout's decisions, oldest first."""
    return rollout.events.order_by("at", "id")


def rollouts(*, workflow: str | None = None, state: str | None = None) -> QuerySet[Rollout]:
    return _where(Rollout.objects.select_related(*ROLLOUT_JOINS), workflow__name=workflow, state=state)


def instances(
    *,
    workflow: str | None = None,
    version: WorkflowVersion | None = None,
    status: str | None = None,
    created_from: datetime | None = None,
    created_before: datetime | None = None,
    instance_id: int | None = None,
    context: bool = True,
    fields: tuple[str, ...] = (),
) -> QuerySet[WorkflowInstance]:
    """Instances of a version, or of a workflow; without their contexts (the largest column) when
    `context` is False, and with only `fields`, unjoined, when given (a page of a few columns)."""
    if fields:
        rows = WorkflowInstance.objects.only(*fields)
    else:
        rows = WorkflowInstance.objects.select_related(*INSTANCE_JOINS)
        if not context:
            rows = rows.defer("context")
    return _where(
        rows,
        version=version,
        workflow__name=None if version is not None else workflow,
        status=status,
        created_at__gte=created_from,
        created_at__lt=created_before,
        pk=instance_id,
    )


def step_runs(instance: WorkflowInstance, limit: int = 100) -> QuerySet[StepRun]:
    """An instance's latest step runs, with the version each ran on."""
    return StepRun.objects.filter(instance=instance).select_related("version").order_by("-pk")[:limit]


def audit_events(
    *,
    action: str | None = None,
    actor: str | None = None,
    workflow: str | None = None,
    instance: int | None = None,
    batch: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[AuditEvent]:
    """Audit events; `action` matches as a prefix ("batch." for every batch event), `actor` by its label."""
    rows = AuditEvent.objects.select_related("workflow", "version", "batch")
    if "\x00" in (action or "") + (actor or ""):
        return rows.none()  # PostgreSQL text holds no NUL: nothing matches, and the query would fail
    return _where(
        rows,
        action__startswith=action,
        actor_label=actor,
        workflow__name=workflow,
        instance_id=instance,
        batch_id=batch,
        created_at__gte=since,
        created_at__lt=until,
    )


def workflows() -> QuerySet[Workflow]:
    return Workflow.objects.order_by("-pk")


def versions() -> QuerySet[WorkflowVersion]:
    """Every version, with its workflow."""
    return WorkflowVersion.objects.select_related("workflow")


def versions_of(workflow_id: int, *, leaving_out: WorkflowVersion | None = None) -> QuerySet[WorkflowVersion]:
    """A workflow's versions by major, minor, patch and prerelease (sort by `parsed` for semver order)."""
    rows = WorkflowVersion.objects.filter(workflow_id=workflow_id).order_by("major", "minor", "patch", "prerelease")
    return rows if leaving_out is None else rows.exclude(pk=leaving_out.pk)


def in_flight_samples(workflow: Workflow, since: datetime) -> QuerySet[InFlightSample, tuple[str, datetime, int]]:
    """(version label, taken at, in flight) of a workflow's samples since `since`, oldest first."""
    return (
        InFlightSample.objects.filter(version__workflow=workflow, taken_at__gte=since)
        .values_list("version__version", "taken_at", "in_flight")
        .order_by("taken_at")
    )


def step_run_counts() -> QuerySet[StepRun, tuple[int, str, int]]:
    """(version id, outcome, how many) over every finished step run."""
    return StepRun.objects.order_by().values_list("version_id", "outcome").annotate(n=Count("id"))
