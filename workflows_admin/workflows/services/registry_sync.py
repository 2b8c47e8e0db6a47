"""Bring the database's version table in line with the code registry of this process.

Versions are created or updated, never deleted: a version that the code no longer defines keeps its
row (and its instances) and is flagged as lacking code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from workflows_admin.engine import Registry, VersionDef
from workflows_admin.engine.diff import shape_changes, version_shape

from ..models import IN_FLIGHT_STATUSES, Patch, Workflow, WorkflowVersion
from ..rules import can_acknowledge_shape
from ..runtime import get_registry
from ..selectors import status_counts_by_version
from . import audit
from .audit import Actor
from .reasons import parse_reason
from .retries import retry_on_deadlock
from .upgrades import refresh_upgrade_targets


@dataclass
class SyncReport:
    created_versions: list[str] = field(default_factory=list)
    missing_code: list[str] = field(default_factory=list)
    made_current: list[str] = field(default_factory=list)
    # "<workflow> <version>" -> {"changes": [...], "in_flight": n}: code that changed shape under a label
    # while instances are in flight on it.
    shape_changed: dict[str, dict[str, Any]] = field(default_factory=dict)


def _version_fields(definition: VersionDef) -> dict[str, Any]:
    parsed = definition.version
    return {
        "major": parsed.major,
        "minor": parsed.minor,
        "patch": parsed.patch,
        "prerelease": ".".join(parsed.prerelease),
        "description": definition.description,
        "steps": [{"name": step.name, "step_version": step.step_version} for step in definition.steps],
        "contract": definition.contract.describe(),
        "patches": list(definition.patches),
        "has_code": True,
    }


def _one_sync_at_a_time() -> None:
    """Serialise syncs (a starting worker and a deploy command may sync at once) until this transaction ends;
    otherwise both would insert the same new versions and one would fail on the unique constraint."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext('workflows.sync_registry'))")


def sync_registry(registry: Registry | None = None) -> SyncReport:
    registry = registry or get_registry()
    report = SyncReport()
    now = timezone.now()
    with transaction.atomic():
        _one_sync_at_a_time()
        known_names = set()
        for definition in registry:
            known_names.add(definition.name)
            workflow, _ = Workflow.objects.get_or_create(
                name=definition.name, defaults={"description": definition.description}
            )
            for version_def in definition.versions.values():
                previous = WorkflowVersion.objects.filter(workflow=workflow, version=version_def.label).first()
                fields = _version_fields(version_def)
                # The upgrade policy the code declares is taken when the version first appears; an
                # operator's choice (workflows upgrade-policy) is kept afterwards.
                row, created = WorkflowVersion.objects.update_or_create(
                    workflow=workflow,
                    version=version_def.label,
                    defaults=fields,
                    create_defaults={**fields, "upgrade_policy": version_def.upgrade},
                )
                if created:
                    report.created_versions.append(str(row))
                _watch_shape(row, previous, version_def, report, now)
            for patch in definition.patches.values():
                Patch.objects.get_or_create(
                    workflow=workflow,
                    name=patch.name,
                    defaults={"description": patch.description, "introduced_at": now},
                )
            gone = WorkflowVersion.objects.filter(workflow=workflow, has_code=True).exclude(
                version__in=[v.label for v in definition.versions.values()]
            )
            report.missing_code += [str(v) for v in gone]
            gone.update(has_code=False)
            _ensure_current(workflow, report)
            refresh_upgrade_targets(workflow.pk)
        orphaned = WorkflowVersion.objects.filter(has_code=True).exclude(workflow__name__in=known_names)
        report.missing_code += [str(v) for v in orphaned]
        orphaned.update(has_code=False)
    return report


def _shape_of_row(row: WorkflowVersion) -> dict[str, Any]:
    """A row's shape as the sync before stored it (rows registered before shapes were kept)."""
    return {"steps": row.steps, "contract": row.contract, "patches": row.patches}


def _watch_shape(
    row: WorkflowVersion, previous: WorkflowVersion | None, definition: VersionDef, report: SyncReport, now: datetime
) -> None:
    """Compare the code's shape with the one first registered under this label. A change while instances
    are in flight is recorded on the row, reported and audited (once per distinct change); with nothing in
    flight the new shape becomes the baseline, as no instance started on the old one is left."""
    shape = version_shape(definition)
    baseline = (previous.registered_shape or _shape_of_row(previous)) if previous else shape
    changes = shape_changes(baseline, shape)
    by_status = status_counts_by_version([row.workflow_id]).get(row.pk, {}) if changes else {}
    count = sum(by_status.get(status, 0) for status in IN_FLIGHT_STATUSES)
    if not count:
        if row.registered_shape != shape or row.shape_change:
            WorkflowVersion.objects.filter(pk=row.pk).update(registered_shape=shape, shape_change={})
        return
    listed = [change.as_dict() for change in changes]
    flag = {"changes": listed, "in_flight": count, "at": (row.shape_change or {}).get("at") or now.isoformat()}
    report.shape_changed[str(row)] = flag
    if (row.shape_change or {}).get("changes") != listed:
        audit.record(
            "version.shape_changed",
            actor="system:sync",
            workflow_id=row.workflow_id,
            version=row,
            message=f"the code of {row} changed shape since it was registered, with {count} instance(s) in flight: "
            + "; ".join(change.detail for change in changes),
            details=flag,
        )
    WorkflowVersion.objects.filter(pk=row.pk).update(registered_shape=baseline, shape_change=flag)


@retry_on_deadlock()
def acknowledge_shape_change(version: WorkflowVersion, *, reason: Any, actor: Actor) -> WorkflowVersion:
    """An operator's word that the code now under this label runs the instances started on its old shape
    (a step added at the end, a looser contract): that shape becomes the label's baseline, the flag and
    sync's exit 9 end, and the reason is audited. The safe way otherwise: a new label and a migration."""
    reason = parse_reason(
        reason, field="reason", needed="acknowledging a shape change needs a reason, for the audit log"
    )
    with transaction.atomic():
        locked = WorkflowVersion.objects.select_for_update().select_related("workflow").get(pk=version.pk)
        can_acknowledge_shape(locked).require(field="version")
        changes = locked.shape_change.get("changes", [])
        locked.registered_shape = _shape_of_row(locked)  # the code's shape, as the last sync stored it
        locked.shape_change = {}
        locked.save(update_fields=["registered_shape", "shape_change"])
        audit.record(
            "version.shape_acknowledged",
            actor=actor,
            workflow=locked.workflow,
            version=locked,
            message=f"the shape change of {locked} was acknowledged ("
            + "; ".join(change["detail"] for change in changes)
            + f"): {reason}",
            details={"changes": changes, "reason": reason},
        )
    return locked


def _ensure_current(workflow: Workflow, report: SyncReport) -> None:
    """A workflow seen for the first time starts new instances on its highest version."""
    versions = list(WorkflowVersion.objects.select_for_update().filter(workflow=workflow))
    if any(v.state == WorkflowVersion.State.CURRENT for v in versions):
        return
    candidates = [v for v in versions if v.has_code and v.state != WorkflowVersion.State.RETIRED]
    if not candidates:
        return
    newest = max(candidates, key=lambda v: v.parsed)
    newest.state = WorkflowVersion.State.CURRENT
    newest.state_changed_at = timezone.now()
    newest.save(update_fields=["state", "state_changed_at"])
    report.made_current.append(str(newest))
    audit.record(
        "version.made_current",
        actor="system:sync",
        workflow=workflow,
        version=newest,
        message=f"{newest} became current: the workflow had no current version",
    )


def sync_after_migrate(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """post_migrate hook: keep counters, the version table and the periodic schedules in line after every migrate."""
    from django.db import connections

    from ..counters import ensure_installed
    from .schedules import ensure_periodic_tasks

    ensure_installed(connections[using])
    sync_registry()
    ensure_periodic_tasks()


def shape_change_flags(workflow_id: int | None = None) -> list[dict[str, Any]]:
    """The versions the dashboard's banner names: a shape change recorded by sync while instances are in
    flight on them now (from the counters), [{"version": row, "changes": [...], "in_flight": n, "at"}]."""
    found = WorkflowVersion.objects.exclude(shape_change={}).select_related("workflow")
    if workflow_id is not None:
        found = found.filter(workflow_id=workflow_id)
    rows = list(found)
    if not rows:
        return []
    counts = status_counts_by_version(sorted({row.workflow_id for row in rows}))
    flags = []
    for row in rows:
        in_flight = sum(counts.get(row.pk, {}).get(status, 0) for status in IN_FLIGHT_STATUSES)
        if in_flight:
            flags.append({"version": row, **row.shape_change, "in_flight": in_flight})
    return flags


def unsynced_shape_changes(registry: Registry | None = None) -> dict[str, list[str]]:
    """{"<workflow> <version>": [change, ...]} for the labels whose code here differs in shape from what the
    database registered while instances are in flight on them: what `manage.py check` warns about before
    a sync has even run. Reads only."""
    registry = registry or get_registry()
    found = {}
    rows = {
        (row.workflow.name, row.version): row
        for row in WorkflowVersion.objects.select_related("workflow").filter(
            workflow__name__in=[definition.name for definition in registry]
        )
    }
    counts = status_counts_by_version(sorted({row.workflow_id for row in rows.values()}))
    for definition in registry:
        for version_def in definition.versions.values():
            row = rows.get((definition.name, version_def.label))
            if row is None or not sum(counts.get(row.pk, {}).get(s, 0) for s in IN_FLIGHT_STATUSES):
                continue
            changes = shape_changes(row.registered_shape or _shape_of_row(row), version_shape(version_def))
            if changes:
                found[str(row)] = [change.detail for change in changes]
    return found
