"""Stale-instance cleanup: instances in flight longer than their version's maximum lifetime.

Each version takes its lifetime and policy from its own fields, else from its workflow's
(WorkflowVersion.max_lifetime / stale_policy override Workflow.max_lifetime / stale_policy). An
instance is stale when it started more than `max_lifetime` ago and is still in flight. Policies:
- report:  listed by the preview and the run's result, nothing changes;
- expire:  status expired, the reason kept on the instance, one audit event per instance;
- migrate: a migration batch (services.batches.start_migration) moves them to the current version;
  over WORKFLOWS_APPROVAL_THRESHOLD instances it awaits a user's approval, as any batch does.

`preview_cleanup` is the dry run (what the next run would do); `run_cleanup` applies it in chunks.
Both the periodic task and `manage.py workflows cleanup` call these.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from ..models import (
    IN_FLIGHT_STATUSES,
    BatchItem,
    InstanceStatus,
    MigrationBatch,
    Workflow,
    WorkflowInstance,
    WorkflowVersion,
)
from ..runtime import migration_path_problem
from . import audit, lifecycle
from .audit import Actor
from .batches import MAX_CHUNK, start_migration
from .errors import ServiceError
from .numbers import parse_whole_number

Policy = Workflow.StalePolicy
logger = logging.getLogger(__name__)
PREVIEW_IDS = 100  # instance ids listed per version in a preview; the count is always exact
MIGRATION_BATCH_IDS = 10_000  # instances per migration batch; keeps each batch's frozen id list small


@dataclass
class VersionCleanup:
    """What cleanup does (or did) for one version."""

    version: WorkflowVersion
    policy: str  # report / expire / migrate
    max_lifetime: timedelta
    cutoff: datetime  # instances started before this are stale
    stale: int = 0  # stale in-flight instances found (preview) or at the start of the run
    instance_ids: list[int] = field(default_factory=list)  # preview: the oldest PREVIEW_IDS of them
    target: WorkflowVersion | None = None  # migrate: the current version
    error: str = ""  # why the policy cannot be applied; nothing is changed for this version then
    expired: int = 0  # run: instances expired
    migrating: int = 0  # run: instances handed to migration batches
    batch_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "workflow": self.version.workflow.name,
            "version": self.version.version,
            "version_id": self.version.pk,
            "policy": self.policy,
            "max_lifetime_seconds": self.max_lifetime.total_seconds(),
            "cutoff": self.cutoff.isoformat(),
            "stale": self.stale,
            "instance_ids": self.instance_ids,
            "target": self.target.version if self.target else None,
            "error": self.error,
            "expired": self.expired,
            "migrating": self.migrating,
            "batch_ids": self.batch_ids,
        }


@dataclass
class CleanupPlan:
    """Per version with stale instances, in workflow and version order. `dry_run` is true for a preview."""

    now: datetime
    dry_run: bool
    versions: list[VersionCleanup]

    @property
    def stale(self) -> int:
        return sum(item.stale for item in self.versions)

    @property
    def expired(self) -> int:
        return sum(item.expired for item in self.versions)

    @property
    def migrating(self) -> int:
        return sum(item.migrating for item in self.versions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "dry_run": self.dry_run,
            "stale": self.stale,
            "expired": self.expired,
            "migrating": self.migrating,
            "versions": [item.as_dict() for item in self.versions],
        }


def _stale(version: WorkflowVersion, cutoff: datetime) -> QuerySet[WorkflowInstance]:
    return WorkflowInstance.objects.filter(version=version, status__in=IN_FLIGHT_STATUSES, created_at__lt=cutoff)


def _not_in_open_batch(queryset: QuerySet[WorkflowInstance]) -> QuerySet[WorkflowInstance]:
    """Leave out instances a migration batch has selected and not processed yet (a previous cleanup's)."""
    # A batch awaiting approval or queued holds its instances too: the next run must not take them again.
    open_items = BatchItem.objects.filter(
        state=BatchItem.State.PENDING,
        batch__state__in=[
            *MigrationBatch.ACTIVE_STATES,
            MigrationBatch.State.AWAITING_APPROVAL,
            MigrationBatch.State.QUEUED,
        ],
    )
    return queryset.exclude(pk__in=open_items.values("instance_id"))


def _plan_version(version: WorkflowVersion, now: datetime, current: WorkflowVersion | None) -> VersionCleanup | None:
    max_lifetime = version.max_lifetime or version.workflow.max_lifetime
    if max_lifetime is None:
        return None
    item = VersionCleanup(
        version=version,
        policy=version.stale_policy or version.workflow.stale_policy,
        max_lifetime=max_lifetime,
        cutoff=now - max_lifetime,
    )
    stale = _stale(version, item.cutoff)
    if item.policy == Policy.MIGRATE:
        stale = _not_in_open_batch(stale)
        item.target = current
        if current is None:
            item.error = f"workflow '{version.workflow.name}' has no current version to migrate to; make one current"
        elif current.pk == version.pk:
            item.error = f"{version} is the current version; set its stale policy to expire or report"
        else:
            item.error = migration_path_problem(version.workflow.name, version.version, current.version)
    item.stale = stale.count()
    if not item.stale:
        return None
    item.instance_ids = list(stale.order_by("created_at", "pk").values_list("pk", flat=True)[:PREVIEW_IDS])
    return item


def _plan(now: datetime, dry_run: bool) -> CleanupPlan:
    versions = list(
        WorkflowVersion.objects.exclude(state=WorkflowVersion.State.RETIRED)
        .select_related("workflow")
        .order_by("workflow__name", "major", "minor", "patch", "prerelease")
    )
    current = {v.workflow_id: v for v in versions if v.state == WorkflowVersion.State.CURRENT}
    items = [_plan_version(v, now, current.get(v.workflow_id)) for v in versions]
    return CleanupPlan(now=now, dry_run=dry_run, versions=[item for item in items if item is not None])


def preview_cleanup(now: datetime | None = None) -> CleanupPlan:
    """The dry run: per version with stale in-flight instances, the count, the oldest ids and the action.

    Changes nothing. `plan.versions[i].error` says why a version's action cannot run (e.g. no current
    version to migrate to, or no migration path to it); such versions are left alone by `run_cleanup`.
    """
    return _plan(now or timezone.now(), dry_run=True)


def run_cleanup(now: datetime | None = None, *, actor: Actor = "system:cleanup", chunk_size: int = 500) -> CleanupPlan:
    """Apply the policies: expire or migrate the stale instances, in chunks of `chunk_size`, audited.

    Safe to run twice at once: rows are taken with SELECT ... FOR UPDATE SKIP LOCKED, re-checked in
    flight under the lock, and a run only touches rows it locked, so each instance is expired (or
    handed to a migration) once. Returns the plan with `expired` / `migrating` / `batch_ids` filled in.
    Each version is handled on its own: one whose policy cannot be applied (planned or failed) keeps
    the reason in its `error`, is audited as cleanup.version_failed, and the others go on.
    """
    # Each migrating version's batch takes the same chunk size, so the batches' bound applies.
    chunk_size = parse_whole_number(chunk_size, "chunk_size", minimum=1, maximum=MAX_CHUNK)
    plan = _plan(now or timezone.now(), dry_run=False)
    for item in plan.versions:
        if not item.error:
            _apply(item, actor, chunk_size)
        if item.expired:  # one event with the count, for notifications (each instance has its own too)
            audit.record(
                "cleanup.expired",
                actor=actor,
                workflow_id=item.version.workflow_id,
                version=item.version,
                message=f"{item.version}: the stale-instance cleanup expired {item.expired} instance(s)",
                details={"expired": item.expired, "max_lifetime_seconds": item.max_lifetime.total_seconds()},
            )
        if item.error:
            audit.record(
                "cleanup.version_failed",
                actor=actor,
                workflow_id=item.version.workflow_id,
                version=item.version,
                message=f"{item.version}: stale policy {item.policy} not applied to {item.stale} stale instance(s): "
                f"{item.error}",
                details={"policy": item.policy, "stale": item.stale, "expired": item.expired},
            )
    return plan


def _apply(item: VersionCleanup, actor: Actor, chunk_size: int) -> None:
    """One version's policy. What goes wrong with it stops this version only (its error is kept on
    the item); a lost database connection stops the run, for the task to retry."""
    try:
        if item.policy == Policy.EXPIRE:
            _expire(item, actor, chunk_size)
        elif item.policy == Policy.MIGRATE:
            _migrate(item, actor, chunk_size)
    except (ServiceError, DatabaseError) as exc:
        if isinstance(exc, (OperationalError, InterfaceError)):
            raise
        logger.exception("stale cleanup of %s failed", item.version)
        item.error = exc.message if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {exc}"


def _expire(item: VersionCleanup, actor: Actor, chunk_size: int) -> None:
    version = item.version
    reason = (
        f"expired by stale-instance cleanup: in flight longer than the max lifetime ({item.max_lifetime}) of {version}"
    )
    while True:
        with transaction.atomic():
            ids = list(
                _stale(version, item.cutoff)
                .select_for_update(skip_locked=True)
                .order_by("created_at", "pk")
                .values_list("pk", flat=True)[:chunk_size]
            )
            if not ids:
                return
            now = timezone.now()
            # The rows stay locked from the read above, so none changed since; bumping the revision makes a
            # step still running on one of them discard its result instead of writing over the expiry.
            WorkflowInstance.objects.filter(pk__in=ids).update(
                status=InstanceStatus.EXPIRED,
                status_reason=reason,
                revision=F("revision") + 1,
                lease_expires_at=None,
                finished_at=now,
                updated_at=now,
            )
            lifecycle.mark_drained_when_empty(
                version.pk, why="the stale-instance cleanup expired its last in-flight instances", actor=actor
            )
            audit.record_per_instance(
                "instance.expired",
                ids,
                actor=actor,
                message=reason,
                workflow_id=version.workflow_id,
                version=version,
                details={"policy": Policy.EXPIRE, "max_lifetime_seconds": item.max_lifetime.total_seconds()},
            )
        item.expired += len(ids)  # kept per committed chunk: a later chunk may fail


def _migrate(item: VersionCleanup, actor: Actor, chunk_size: int) -> None:
    """Hand the stale instances to migration batches of up to MIGRATION_BATCH_IDS each; a batch migrates
    its instances in its own chunks, in the background."""
    version = item.version
    target = item.target
    # _plan_version sets an error whenever a migrating version has no target, and _apply skips those.
    assert target is not None
    while True:
        with transaction.atomic():
            # Locked until the batch (and its items) is committed, so a concurrent run skips them now and
            # finds them in an open batch afterwards.
            ids = list(
                _not_in_open_batch(_stale(version, item.cutoff))
                .select_for_update(skip_locked=True)
                .order_by("created_at", "pk")
                .values_list("pk", flat=True)[:MIGRATION_BATCH_IDS]
            )
            if not ids:
                return
            batch = start_migration(
                version.workflow.name,
                source=version.version,
                target=target.version,
                selection={"ids": ids},
                actor=actor,
                chunk_size=chunk_size,
                freeze=True,  # pending items: what the next run's _not_in_open_batch leaves out
            )
            audit.record(
                "cleanup.migration_started",
                actor=actor,
                workflow_id=version.workflow_id,
                version=version,
                batch=batch,
                message=f"{len(ids)} stale instance(s) of {version} migrate to {target.version} (batch #{batch.pk})",
                details={"instance_ids": ids, "max_lifetime_seconds": item.max_lifetime.total_seconds()},
            )
        item.migrating += len(ids)
        item.batch_ids.append(batch.pk)
