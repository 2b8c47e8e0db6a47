"""Every read the pages and commands need; kept cheap at a million instances (indexed GROUP BYs)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from django.db import connection
from django.db.models import Count, Sum

from . import counters
from .models import IN_FLIGHT_STATUSES, InstanceCount, InstanceStatus, Workflow, WorkflowInstance, WorkflowVersion


@dataclass
class VersionSummary:
    version: WorkflowVersion
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def in_flight(self) -> int:
        return sum(self.counts.get(status, 0) for status in IN_FLIGHT_STATUSES)

    @property
    def lacks_code(self) -> bool:
        return not self.version.has_code or self.version.code_missing_since is not None


@dataclass
class WorkflowSummary:
    workflow: Workflow
    versions: list[VersionSummary]

    @property
    def current(self) -> WorkflowVersion | None:
        return next((v.version for v in self.versions if v.version.state == WorkflowVersion.State.CURRENT), None)


def status_counts_by_version(workflow_ids: list[int] | None = None) -> dict[int, dict[str, int]]:
    """{version id: {status: count}}, exact; from the trigger-kept counters where the database has them."""
    if counters.maintained(connection):
        rows = InstanceCount.objects.all()
        if workflow_ids is not None:
            rows = rows.filter(version__workflow_id__in=workflow_ids)
        grouped = rows.order_by().values_list("version_id", "status").annotate(total=Sum("n"))
    else:
        rows = WorkflowInstance.objects.all()
        if workflow_ids is not None:
            rows = rows.filter(workflow_id__in=workflow_ids)
        grouped = rows.order_by().values_list("version_id", "status").annotate(total=Count("id"))
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    for version_id, status, total in grouped:
        if total:
            counts[version_id][status] = total
    return counts


def overview() -> list[WorkflowSummary]:
    versions = list(WorkflowVersion.objects.select_related("workflow"))
    counts = status_counts_by_version()
    by_workflow: dict[int, list[VersionSummary]] = defaultdict(list)
    for version in sorted(versions, key=lambda v: v.parsed, reverse=True):
        by_workflow[version.workflow_id].append(VersionSummary(version, counts.get(version.pk, {})))
    return [WorkflowSummary(w, by_workflow.get(w.pk, [])) for w in Workflow.objects.all()]


STATUS_ORDER = [status.value for status in InstanceStatus]
