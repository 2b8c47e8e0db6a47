"""Bring the database's version table in line with the code registry of this process.

Versions are created or updated, never deleted: a version that the code no longer defines keeps its
row (and its instances) and is flagged as lacking code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import connection, transaction
from django.utils import timezone

from workflows_admin.engine import Registry, VersionDef

from ..models import Patch, Workflow, WorkflowVersion
from ..runtime import get_registry
from . import audit
from .upgrades import refresh_upgrade_targets


@dataclass
class SyncReport:
    created_versions: list[str] = field(default_factory=list)
    missing_code: list[str] = field(default_factory=list)
    made_current: list[str] = field(default_factory=list)


def _version_fields(definition: VersionDef) -> dict:
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


def sync_after_migrate(sender, using="default", **kwargs):
    """post_migrate hook: keep counters, the version table and the periodic schedules in line after every migrate."""
    from django.db import connections

    from ..counters import ensure_installed
    from .schedules import ensure_periodic_tasks

    ensure_installed(connections[using])
    sync_registry()
    ensure_periodic_tasks()
