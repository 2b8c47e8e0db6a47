"""Rows as the API shows them (the shapes in schemas.py), read through the dashboard's selectors."""

from __future__ import annotations

from workflows_admin.workflows import listings, selectors
from workflows_admin.workflows.models import (
    IN_FLIGHT_STATUSES,
    AuditEvent,
    MigrationBatch,
    Rollout,
    WorkflowInstance,
    WorkflowVersion,
)
from workflows_admin.workflows.presenters import batch_summary
from workflows_admin.workflows.rules import Verdict


def verdicts(actions: dict[str, Verdict]) -> dict[str, dict]:
    return {name: {"allowed": verdict.allowed, "reason": verdict.reason} for name, verdict in actions.items()}


def version(row: WorkflowVersion, counts: dict[str, int], facts: dict, *, actions: bool = False) -> dict:
    in_flight = sum(counts.get(status, 0) for status in IN_FLIGHT_STATUSES)
    return {
        "workflow": row.workflow.name,
        "version": row.version,
        "state": row.state,
        "has_code": row.has_code,
        "code_missing_since": row.code_missing_since,
        "counts": counts,
        "in_flight": in_flight,
        "oldest_in_flight": facts.get("oldest_in_flight"),
        "drained_at": row.drained_at,
        "retired_at": row.retired_at,
        "registered_at": row.registered_at,
        "steps": row.steps,
        "actions": verdicts(selectors.version_actions(row, in_flight)) if actions else None,
    }


def one_version(row: WorkflowVersion) -> dict:
    counts = selectors.status_counts_by_version([row.workflow_id]).get(row.pk, {})
    facts = selectors.version_lifecycle(row.workflow_id).get(row.pk, {})
    return version(row, counts, facts, actions=True)


def workflow(summary: selectors.WorkflowSummary, facts: dict[int, dict]) -> dict:
    current = summary.current
    return {
        "name": summary.workflow.name,
        "description": summary.workflow.description,
        "current_version": current.version if current else None,
        "ramp_percent": summary.workflow.ramp_percent,
        "versions": [version(v.version, v.counts, facts.get(v.version.pk, {})) for v in summary.versions],
    }


def batch(row: MigrationBatch, *, detail: bool = False) -> dict:
    out = {**batch_summary(row), "workflow": row.workflow.name, "started_by": selectors.started_by(row)}
    if detail:
        facts = selectors.batch_follow_ups(row) if row.state != MigrationBatch.State.RUNNING else None
        out["actions"] = verdicts(selectors.batch_actions(row, facts))
        out["failures"] = [
            {"instance_id": item.instance_id, "state": item.state, "error": item.error}
            for item in selectors.batch_failures(row)
        ]
    return out


def rollout(row: Rollout, *, detail: bool = False) -> dict:
    out = {
        "id": row.pk,
        "workflow": row.workflow.name,
        "target_version": row.target_version.version,
        "previous_version": row.previous_version.version,
        "strategy": row.strategy,
        "state": row.state,
        "percent": row.current_percent,
        "on_breach": row.on_breach,
        "gates": row.gates,
        "interval_seconds": row.interval_seconds,
        "halted_reason": row.halted_reason,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
    }
    if detail:
        out["events"] = [
            {"at": e.at, "decision": e.decision, "percent": e.percent, "message": e.message, "figures": e.figures}
            for e in listings.rollout_events(row)
        ]
    return out


def instance(row: WorkflowInstance, *, context: bool = True) -> dict:
    return {
        "id": row.pk,
        "workflow": row.workflow.name,
        "version": row.version.version,
        "status": row.status,
        "current_step": row.current_step,
        "status_reason": row.status_reason,
        "context": row.context if context else None,
        "start_key": row.start_key,
        "revision": row.revision,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "finished_at": row.finished_at,
    }


def audit_event(row: AuditEvent) -> dict:
    return {
        "id": row.pk,
        "created_at": row.created_at,
        "action": row.action,
        "actor": row.actor_label,
        "workflow": row.workflow.name if row.workflow else None,
        "version": row.version.version if row.version else None,
        "instance_id": row.instance_id,
        "batch_id": row.batch_id,
        "message": row.message,
        "details": row.details,
    }
