"""The way back from the missing-code guard: parked instances resume when their code is deployed again.

services/steps.py parks an instance (status parked, reason kept) and stamps its version's
`code_missing_since` when a worker has no handler for the instance's version or step. When code
returns (a worker starts: Celery's worker_ready signal; or `manage.py workflows sync`),
`resume_parked` sets the parked instances whose step this process can run back to pending and
clears `code_missing_since` of every version left with nothing parked (also when the parked
instances were migrated or cancelled away meanwhile).

The dashboard flag is derived, not stored: see selectors.code_guard_flags.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from workflows_admin.engine import Registry

from ..models import InstanceStatus, WorkflowInstance, WorkflowVersion
from ..runtime import get_registry
from . import audit
from .audit import Actor
from .dispatch import enqueue_steps
from .registry_sync import sync_registry

logger = logging.getLogger(__name__)


def resume_parked(
    *, actor: Actor = "system:resume", registry: Registry | None = None, chunk_size: int = 500
) -> dict[str, int]:
    """Resume parked instances whose version and step this process has code for.

    Returns {"<workflow> <version>": instances resumed} for the versions that resumed any. Each
    chunk is one transaction: rows locked (SKIP LOCKED, so two resumers never take the same rows),
    status back to pending, revision bumped, a step task sent on commit, one audit event with the ids.
    """
    registry = registry or get_registry()
    resumed: dict[str, int] = {}
    # Two narrow reads (the status index), not a join of versions with every instance.
    with_parked = set(
        WorkflowInstance.objects.filter(status=InstanceStatus.PARKED)
        .order_by()
        .values_list("version_id", flat=True)
        .distinct()
    )
    candidates = WorkflowVersion.objects.filter(
        Q(code_missing_since__isnull=False) | Q(pk__in=with_parked)
    ).select_related("workflow")
    for version in candidates:
        definition = registry.find_version(version.workflow.name, version.version)
        if definition is not None:
            count = _resume_version(version, definition.step_names, actor, chunk_size)
            if count:
                resumed[str(version)] = count
        # Nothing parked any more (resumed now, or migrated/cancelled away earlier): the code is no longer missing.
        if not WorkflowInstance.objects.filter(version=version, status=InstanceStatus.PARKED).exists():
            WorkflowVersion.objects.filter(pk=version.pk).update(code_missing_since=None, code_missing_reason="")
    return resumed


def _resume_version(version: WorkflowVersion, step_names: list[str], actor: Actor, chunk_size: int) -> int:
    total = 0
    while True:
        with transaction.atomic():
            locked = list(
                WorkflowInstance.objects.select_for_update(skip_locked=True)
                .filter(version=version, status=InstanceStatus.PARKED, current_step__in=step_names)
                .order_by("pk")
                .values_list("pk", "revision")[:chunk_size]
            )
            if not locked:
                return total
            ids = [pk for pk, _ in locked]
            WorkflowInstance.objects.filter(pk__in=ids, status=InstanceStatus.PARKED).update(
                status=InstanceStatus.PENDING,
                status_reason="",
                revision=F("revision") + 1,
                lease_expires_at=None,
                updated_at=timezone.now(),
            )
            enqueue_steps((pk, revision + 1) for pk, revision in locked)
            audit.record(
                "instance.resumed",
                actor=actor,
                workflow_id=version.workflow_id,
                version=version,
                message=f"{len(ids)} parked instance(s) of {version} resumed: its code is deployed again",
                details={"instance_ids": ids},
            )
            total += len(ids)


def sync_and_resume(*, actor: Actor = "system:sync") -> tuple[Any, dict[str, int]]:
    """What a deploy does: bring the version table in line with this process's code, then resume what it can run."""
    report = sync_registry()
    return report, resume_parked(actor=actor)


def on_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    """Celery worker_ready: a (re)started worker may bring back code that parked instances wait for."""
    from django.db import connection

    try:
        report, resumed = sync_and_resume(actor="system:worker")
        if resumed:
            logger.info("resumed parked instances: %s", resumed)
        if report.missing_code:
            logger.warning("versions without code in this worker: %s", ", ".join(report.missing_code))
    except Exception:  # a worker must start even when the database is briefly unreachable
        logger.exception("syncing the registry at worker start failed; parked instances stay parked")
    finally:
        connection.close()  # the main process runs no tasks; do not keep its connection open
