"""Selectors for the filtered lists the pages, the API and the CLI show, newest first.

Each takes filters already read from the request (None: not applied) and returns a lazy queryset,
so the caller pages it (a paginator, the API's cursor) and a filter is never spelled twice.
"""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from .models import AuditEvent, MigrationBatch, Rollout, StepRun, WorkflowInstance, WorkflowVersion

# The joins every list of a kind needs for its rows and their links.
BATCH_JOINS = ("workflow", "source_version", "target_version")
ROLLOUT_JOINS = ("workflow", "target_version", "previous_version")
INSTANCE_JOINS = ("workflow", "version")


def batches(
    *, workflow: str | None = None, state: str | None = None, kind: str | None = None
) -> QuerySet[MigrationBatch]:
    """Started batches (previews apart)."""
    rows = MigrationBatch.objects.select_related(*BATCH_JOINS).exclude(state=MigrationBatch.State.DRAFT)
    if workflow is not None:
        rows = rows.filter(workflow__name=workflow)
    if state is not None:
        rows = rows.filter(state=state)
    if kind is not None:
        rows = rows.filter(kind=kind)
    return rows.order_by("-pk")


def batch_children(batch: MigrationBatch) -> QuerySet[MigrationBatch]:
    """The retries and rollbacks started from a batch."""
    return batch.children.order_by("-pk")


def rollouts(*, workflow: str | None = None, state: str | None = None) -> QuerySet[Rollout]:
    rows = Rollout.objects.select_related(*ROLLOUT_JOINS)
    if workflow is not None:
        rows = rows.filter(workflow__name=workflow)
    if state is not None:
        rows = rows.filter(state=state)
    return rows.order_by("-pk")


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
    """Instances; without their contexts (the largest column) when `context` is False, and with only
    `fields`, unjoined, when given (a page of a few columns)."""
    if fields:
        rows = WorkflowInstance.objects.only(*fields)
    else:
        rows = WorkflowInstance.objects.select_related(*INSTANCE_JOINS)
        if not context:
            rows = rows.defer("context")
    if version is not None:
        rows = rows.filter(version=version)
    elif workflow is not None:
        rows = rows.filter(workflow__name=workflow)
    if status is not None:
        rows = rows.filter(status=status)
    if created_from is not None:
        rows = rows.filter(created_at__gte=created_from)
    if created_before is not None:
        rows = rows.filter(created_at__lt=created_before)
    if instance_id is not None:
        rows = rows.filter(pk=instance_id)
    return rows.order_by("-pk")


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
    if action is not None:
        rows = rows.filter(action__startswith=action)
    if actor is not None:
        rows = rows.filter(actor_label=actor)
    if workflow is not None:
        rows = rows.filter(workflow__name=workflow)
    if instance is not None:
        rows = rows.filter(instance_id=instance)
    if batch is not None:
        rows = rows.filter(batch_id=batch)
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    if until is not None:
        rows = rows.filter(created_at__lt=until)
    return rows.order_by("-pk")
