"""What the version page and the migrate wizard show about a deploy: the version diff with its live
impact, the shape-change flags, and a verification report (asked for, or a refused rollout's)."""

from __future__ import annotations

from typing import Any

from workflows_admin.workflows import listings
from workflows_admin.workflows.models import WorkflowVersion
from workflows_admin.workflows.services import verification
from workflows_admin.workflows.services.errors import ServiceError
from workflows_admin.workflows.services.registry_sync import shape_change_flags

from . import diffs


def default_compare(siblings: list[WorkflowVersion]) -> str:
    """The version a version page compares with: the current one, or for the current one the newest other."""
    current = next((v for v in siblings if v.state == WorkflowVersion.State.CURRENT), None)
    if current is not None:
        return current.version
    return siblings[-1].version if siblings else ""


def diff_section(version: WorkflowVersion, compare: str | None) -> dict[str, Any]:
    """{"diff": the diff from `version` to `compare` (or None with the reason), "compare", "choices"}."""
    siblings = sorted(listings.versions_of(version.workflow_id, leaving_out=version), key=lambda v: v.parsed)
    choices = [v.version for v in siblings]
    compare = compare if compare in choices else default_compare(siblings)
    section: dict[str, Any] = {"compare": compare, "choices": choices, "diff": None, "error": ""}
    if compare:
        try:
            section["diff"] = verification.version_diff(version.workflow.name, source=version.version, target=compare)
        except ServiceError as error:
            section["error"] = error.message
    return section


def migrate_diff(version: WorkflowVersion, target: str) -> dict[str, Any] | None:
    try:
        return verification.version_diff(version.workflow.name, source=version.version, target=target)
    except ServiceError:
        return None


def page_facts(version: WorkflowVersion, compare: str | None) -> dict[str, Any]:
    return {
        "version_diff": diff_section(version, compare),
        "shape_flags": shape_change_flags(version.workflow_id),
    }


def verification_section(version: WorkflowVersion, query: Any) -> dict[str, Any]:
    """The version page's Verify (GET ?verify=1&sample=N): the migrations into this version run on a
    stratified sample of live instances, as `workflows verify` does; a refused input as its error."""
    if not query.get("verify"):
        return {}
    try:
        report = verification.verify(version.workflow.name, version.version, sample=query.get("sample") or None)
    except ServiceError as error:
        return {"verification_error": error}
    return {"verification": _with_diff_rows(report.as_dict())}


def verification_report(error: ServiceError) -> dict[str, Any] | None:
    """A refused rollout's report."""
    report = getattr(error, "report", None)
    return None if report is None else _with_diff_rows(report)


def _with_diff_rows(report: dict[str, Any]) -> dict[str, Any]:
    """The failure examples' diffs as the rows the template shows."""
    for group in report["failures"]:
        for example in group["examples"]:
            example["rows"] = diffs.diff_rows(example["diff"]) if example["diff"] else []
    return report
