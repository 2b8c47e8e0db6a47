"""Every read the pages and commands need; kept cheap at a million instances (indexed GROUP BYs)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from django.db.models import Count

from .models import IN_FLIGHT_STATUSES, InstanceStatus, Workflow, WorkflowInstance, WorkflowVersion


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
    """{version id: {status: count}} in one GROUP BY over the (version, status) index."""
    rows = WorkflowInstance.objects.all()
    if workflow_ids is not None:
        rows = rows.filter(workflow_id__in=workflow_ids)
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    for version_id, status, n in rows.order_by().values_list("version_id", "status").annotate(n=Count("id")):
        counts[version_id][status] = n
    return counts


def overview() -> list[WorkflowSummary]:
    versions = list(WorkflowVersion.objects.select_related("workflow"))
    counts = status_counts_by_version()
    by_workflow: dict[int, list[VersionSummary]] = defaultdict(list)
    for version in sorted(versions, key=lambda v: v.parsed, reverse=True):
        by_workflow[version.workflow_id].append(VersionSummary(version, counts.get(version.pk, {})))
    return [WorkflowSummary(w, by_workflow.get(w.pk, [])) for w in Workflow.objects.all()]


STATUS_ORDER = [status.value for status in InstanceStatus]
