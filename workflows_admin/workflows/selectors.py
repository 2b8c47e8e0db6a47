"""Every read the pages and commands need; kept cheap at a million instances (indexed GROUP BYs)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.db import connection
from django.db.models import Count, Min, OuterRef, Q, QuerySet, Subquery, Sum
from django.utils import timezone

from workflows_admin.engine.planning import reachable_versions

from . import counters, listings, rules
from .models import (
    IN_FLIGHT_STATUSES,
    AuditEvent,
    BatchItem,
    InstanceCount,
    InstanceStatus,
    MigrationBatch,
    Patch,
    Rollout,
    StepRun,
    Workflow,
    WorkflowInstance,
    WorkflowVersion,
)
from .runtime import get_registry
from .services.batches.queueing import holder, queue_place


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


@dataclass(frozen=True)
class MigrationPaths:
    """A version's migrations in the deployed code: from which versions one leads in, to which out,
    and every version a migration can reach (direct ones first)."""

    into: list[str]
    out: list[str]
    targets: list[str]


def migration_paths(version: WorkflowVersion) -> MigrationPaths:
    registry = get_registry()
    if version.workflow.name not in registry:
        return MigrationPaths([], [], [])
    definition = registry.get(version.workflow.name)
    label = version.parsed
    into = sorted(str(m.source) for m in definition.migrations.values() if m.target == label)
    out = sorted(str(m.target) for m in definition.migrations.values() if m.source == label)
    reachable = [str(v) for v in reachable_versions(definition, label)]
    return MigrationPaths(into, out, out + [v for v in reachable if v not in out])


def status_counts_by_version(workflow_ids: list[int] | None = None) -> dict[int, dict[str, int]]:
    """{version id: {status: count}}, exact; from the trigger-kept counters where the database has them."""
    rows: QuerySet[Any]
    grouped: QuerySet[Any, tuple[Any, ...]]
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


# --- Version lifecycle: draining, the missing-code guard, patch markers, step versions -----------------


def version_lifecycle(workflow_id: int | None = None) -> dict[int, dict]:
    """{version id: {"in_flight": int, "oldest_in_flight": datetime | None, "drained_at": datetime | None}}
    for every version (of one workflow if given).

    On PostgreSQL the cost does not grow with the instances: in-flight counts come from the
    trigger-kept counters, and the oldest in-flight start is one index probe per (version, status)
    on the (version, status, created_at) index. Elsewhere one GROUP BY over in-flight instances.
    """
    versions = WorkflowVersion.objects.all()
    if workflow_id is not None:
        versions = versions.filter(workflow_id=workflow_id)
    rows = list(versions.values_list("pk", "drained_at", "upgrade_to__version"))
    drained = {pk: drained_at for pk, drained_at, _ in rows}
    upgrading = {pk: target for pk, _, target in rows if target is not None}
    # Instances that auto-upgrade batches moved off each version (a few batch rows, not instances).
    upgraded = dict(
        MigrationBatch.objects.filter(auto_upgrade=True, source_version_id__in=list(drained))
        .order_by()
        .values_list("source_version_id")
        .annotate(total=Sum("succeeded"))
    )
    if counters.maintained(connection):
        counts = status_counts_by_version([workflow_id] if workflow_id is not None else None)
        in_flight = {v: sum(c.get(s, 0) for s in IN_FLIGHT_STATUSES) for v, c in counts.items()}
        oldest = _oldest_in_flight_by_probe(list(drained))
    else:
        grouped = (
            WorkflowInstance.objects.filter(status__in=IN_FLIGHT_STATUSES, version_id__in=list(drained))
            .order_by()
            .values_list("version_id")
            .annotate(count=Count("id"), oldest=Min("created_at"))
        )
        in_flight = {version_id: count for version_id, count, _ in grouped}
        oldest = {version_id: first for version_id, _, first in grouped}
    return {
        version_id: {
            "in_flight": in_flight.get(version_id, 0),
            "oldest_in_flight": oldest.get(version_id),
            "drained_at": drained_at,
            # Auto-upgrade: where its instances move at their next step boundary, how many will, how many did.
            "upgrades_to": upgrading.get(version_id),
            "will_upgrade": in_flight.get(version_id, 0) if version_id in upgrading else 0,
            "upgraded": upgraded.get(version_id, 0),
        }
        for version_id, drained_at in drained.items()
    }


def _oldest_in_flight_by_probe(version_ids: list[int]) -> dict[int, object]:
    if not version_ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT v.id, min(first.created_at)
            FROM unnest(%s::bigint[]) AS v(id)
            CROSS JOIN unnest(%s::varchar[]) AS s(status)
            LEFT JOIN LATERAL (
                SELECT i.created_at FROM {WorkflowInstance._meta.db_table} AS i
                WHERE i.version_id = v.id AND i.status = s.status ORDER BY i.created_at LIMIT 1
            ) AS first ON true
            GROUP BY v.id
            """,
            [version_ids, [str(status) for status in IN_FLIGHT_STATUSES]],
        )
        return dict(cursor.fetchall())


def code_guard_flags(workflow_id: int | None = None) -> dict[int, dict]:
    """The versions the dashboard flags for missing code: {version id: {"parked": int, "in_flight_without_code":
    int, "since": datetime | None, "reason": str}}.

    Derived, not stored: a version is flagged while it has parked instances, or while it has instances in
    flight and the last sync found no code for it. So the flag clears by itself when code returns and
    the instances resume (services.code_guard.resume_parked) or when they are migrated or cancelled away.
    Reads the trigger-kept counters, so it costs the same at a million instances.
    """
    counts = status_counts_by_version([workflow_id] if workflow_id is not None else None)
    versions = WorkflowVersion.objects.filter(pk__in=list(counts))
    flags = {}
    for version in versions:
        by_status = counts[version.pk]
        parked = by_status.get(InstanceStatus.PARKED, 0)
        in_flight = sum(by_status.get(status, 0) for status in IN_FLIGHT_STATUSES)
        without_code = 0 if version.has_code else in_flight
        if parked or without_code:
            flags[version.pk] = {
                "parked": parked,
                "in_flight_without_code": without_code,
                "since": version.code_missing_since,
                "reason": version.code_missing_reason or ("the last sync found no code for it" if without_code else ""),
            }
    return flags


def patch_usage(workflow: Workflow, version: WorkflowVersion | None = None) -> list[dict]:
    """Each patch marker of a workflow, oldest first, with the in-flight instances on either branch per
    version that checks it (declared with `workflow.version(..., patches=...)`):
    [{"name", "description", "introduced_at", "old_branch_in_flight", "new_branch_in_flight",
      "versions": [{"version", "version_id", "old_branch_in_flight", "new_branch_in_flight"}]}],
    the top-level counts being the sums over those versions. With `version`, only the patches it
    checks, counted on it alone.

    Instances of a version that never checks a patch take neither branch and are not counted, so when
    a version's old_branch_in_flight is 0 its old branch can be deleted, and when the sum is 0 the
    marker can go. An instance takes the branch it recorded (instance.patches); one that has not
    reached the marker yet will take the old branch if it started before the patch reached the
    database. Queries: the patches, the versions (unless given) and one aggregate for all of them.
    """
    patches = list(Patch.objects.filter(workflow=workflow).order_by("introduced_at", "name"))
    versions = [version] if version is not None else list(WorkflowVersion.objects.filter(workflow=workflow))
    versions.sort(key=lambda v: v.parsed)
    checking = {patch.name: [v for v in versions if patch.name in v.patches] for patch in patches}
    if version is not None:
        patches = [patch for patch in patches if checking[patch.name]]
    if not patches:
        return []
    aggregates = {}
    for position, patch in enumerate(patches):
        undecided = ~Q(patches__has_key=patch.name)
        # A key lookup, not `contains`: the SQLite demo has no JSON containment.
        old = Q(**{f"patches__{patch.name}": False}) | (undecided & Q(created_at__lt=patch.introduced_at))
        new = Q(**{f"patches__{patch.name}": True}) | (undecided & Q(created_at__gte=patch.introduced_at))
        aggregates[f"old_{position}"] = Count("id", filter=old)
        aggregates[f"new_{position}"] = Count("id", filter=new)
    checked_ids = {v.pk for checkers in checking.values() for v in checkers}
    per_version: dict[int, Any] = {
        row["version_id"]: row
        for row in WorkflowInstance.objects.filter(version_id__in=checked_ids, status__in=IN_FLIGHT_STATUSES)
        .order_by()
        .values("version_id")
        .annotate(**aggregates)
    }
    usage = []
    for position, patch in enumerate(patches):
        rows: list[dict[str, Any]] = [
            {
                "version": v.version,
                "version_id": v.pk,
                "old_branch_in_flight": per_version.get(v.pk, {}).get(f"old_{position}", 0),
                "new_branch_in_flight": per_version.get(v.pk, {}).get(f"new_{position}", 0),
            }
            for v in checking[patch.name]
        ]
        usage.append(
            {
                "name": patch.name,
                "description": patch.description,
                "introduced_at": patch.introduced_at,
                "old_branch_in_flight": sum(row["old_branch_in_flight"] for row in rows),
                "new_branch_in_flight": sum(row["new_branch_in_flight"] for row in rows),
                "versions": rows,
            }
        )
    return usage


def live_step_versions(version: WorkflowVersion) -> list[dict]:
    """Which step versions of a workflow version are live: [{"step", "step_version", "registered", "in_flight",
    "runs"}], registered steps first in step order, then step versions seen only in past runs.

    `registered` is true for the step version the last sync recorded (the code deployed now); in-flight
    instances sitting at a step will run that one, so `in_flight` counts on its row, exactly (from the
    trigger-kept counters: the same cost at a million instances). `runs` counts the recorded step runs
    (any outcome) per (step, step version).
    """
    runs = {
        (step, step_version): count
        for step, step_version, count in StepRun.objects.filter(version=version)
        .order_by()
        .values_list("step", "step_version")
        .annotate(count=Count("id"))
    }
    at_step = in_flight_by_step(version)
    rows = []
    for step in version.steps:
        key = (step["name"], step.get("step_version", ""))
        rows.append(
            {
                "step": key[0],
                "step_version": key[1],
                "registered": True,
                "in_flight": at_step.get(key[0], 0),
                "runs": runs.pop(key, 0),
            }
        )
    for (step, step_version), count in sorted(runs.items()):
        rows.append({"step": step, "step_version": step_version, "registered": False, "in_flight": 0, "runs": count})
    return rows


def in_flight_by_step(version: WorkflowVersion) -> dict[str, int]:
    """{current step: in-flight instances} of a version, exact; from the trigger-kept counters."""
    in_flight: QuerySet[Any]
    at_step: QuerySet[Any, tuple[Any, ...]]
    if counters.maintained(connection):
        in_flight = InstanceCount.objects.filter(version=version, status__in=IN_FLIGHT_STATUSES)
        at_step = in_flight.order_by().values_list("current_step").annotate(total=Sum("n"))
    else:  # the SQLite demo counts its rows
        in_flight = WorkflowInstance.objects.filter(version=version, status__in=IN_FLIGHT_STATUSES)
        at_step = in_flight.order_by().values_list("current_step").annotate(total=Count("id"))
    return {step: total for step, total in at_step if total}


# --- migration batches -------------------------------------------------------------------------------
def _batch_rate(batch: MigrationBatch) -> float | None:
    """Instances a second since the batch began work.

    It began at its start or, scheduled, at its window. A chunk is processed at the beginning of the
    time it is allowed, so under a rate limit the items done so far cover the time up to when the
    next chunk is due (next_chunk_at), not only up to the last chunk's end: measured to the last
    chunk's end, n chunks spanned n-1 intervals and the rate read above its limit (8 items a second
    showed as 11.2/s after a few chunks). A chunk let through a little early (RATE_SLACK) is capped.
    """
    if not batch.started_at or not batch.processed:
        return None
    began = max(batch.started_at, batch.not_before) if batch.not_before else batch.started_at
    until = batch.progressed_at or batch.started_at
    if batch.rate_limit and batch.next_chunk_at:
        until = max(until, batch.next_chunk_at)
    elapsed = (until - began).total_seconds()
    if elapsed <= 0:
        return None
    rate = batch.processed / elapsed
    return min(rate, batch.rate_limit) if batch.rate_limit else rate


def batch_progress(batch: MigrationBatch, now=None) -> dict:
    """Progress of a batch: counts, percent, rate (instances/s since it began work), estimated seconds
    left, and the start it waits for if it is scheduled and that start has not come."""
    now = now or timezone.now()
    processed = batch.processed
    rate = _batch_rate(batch)
    remaining = batch.total - processed
    waiting_for_start = batch.state == MigrationBatch.State.RUNNING and batch.not_before and now < batch.not_before
    return {
        "scheduled_for": batch.not_before if waiting_for_start else None,
        "total": batch.total,
        "succeeded": batch.succeeded,
        "failed": batch.failed,
        "skipped": batch.skipped,
        "conflicts": batch.conflicts,
        # Instances whose running step the batch waits for: they move when it ends (safe points).
        "deferred": batch.deferred,
        "waiting_note": f"waiting for {batch.deferred} running step{'s' if batch.deferred != 1 else ''}"
        if batch.deferred
        else "",
        "processed": processed,
        "percent": round(100 * processed / batch.total, 1) if batch.total else 100.0,
        "rate_per_second": round(rate, 1) if rate else None,
        "eta_seconds": round(remaining / rate) if rate and remaining and not batch.is_finished else None,
        "finished": batch.is_finished,
    }


def version_actions(version: WorkflowVersion, in_flight: int) -> dict[str, rules.Verdict]:
    """Each lifecycle action's verdict for a version with `in_flight` instances: a button iff allowed."""
    siblings = list(WorkflowVersion.objects.filter(workflow_id=version.workflow_id))
    ramping = next((v for v in siblings if v.state == WorkflowVersion.State.RAMPING and v.pk != version.pk), None)
    return {
        "make_current": rules.can_make_current(version),
        "drain": rules.can_drain(version),
        "retire": rules.can_retire(version, in_flight=in_flight, warm=version.pk in rules.warm_versions(siblings)),
        "ramp": rules.can_ramp(version, other_ramping=ramping, ramp_percent=version.workflow.ramp_percent),
    }


def batch_waits_for(batch: MigrationBatch, user: Any = None) -> dict:
    """What a batch that has not started waits for: a second user's approval (who asked, until
    when, and why `user` may not give it) or its place in its source version's queue (1: next) and
    the unfinished batch holding that place. Empty for a batch that started."""
    if batch.state == MigrationBatch.State.AWAITING_APPROVAL:
        verdict = rules.can_approve(batch, user) if user is not None else rules.ALLOWED
        return {
            "approval": True,
            "requested_by": batch.requested_by,
            "expires_at": rules.approval_expires_at(batch),
            "threshold": rules.approval_threshold(),
            "refusal": verdict.reason,
        }
    if batch.state == MigrationBatch.State.QUEUED:
        return {"queue_place": queue_place(batch), "behind": holder(batch)}
    return {}


def batch_follow_ups(batch: MigrationBatch) -> dict:
    """What the batch's child batches did: instances restored by its rollbacks (`undone`), failed
    instances migrated by its retries (`retried`), and a rollback or retry not finished (its id)."""
    facts: dict = {"undone": 0, "retried": 0, "rollback_under_way": None, "retry_under_way": None}
    for pk, kind, state, succeeded in batch.children.order_by("pk").values_list("pk", "kind", "state", "succeeded"):
        rollback = kind == MigrationBatch.Kind.ROLLBACK
        facts["undone" if rollback else "retried"] += succeeded
        under_way = "rollback_under_way" if rollback else "retry_under_way"
        if state not in MigrationBatch.FINISHED_STATES and facts[under_way] is None:
            facts[under_way] = pk
    return facts


def batch_actions(batch: MigrationBatch, follow_ups: dict | None, user: Any = None) -> dict[str, rules.Verdict]:
    """Each batch action's verdict, given what its child batches did (batch_follow_ups; None while
    it runs, when retry and rollback are refused on the state alone): a button iff allowed. With
    `user`, also approve and reject, whose rules depend on who asks."""
    facts = follow_ups or {}
    answers = {"approve": rules.can_approve(batch, user), "reject": rules.can_reject(batch, user)} if user else {}
    return {
        **answers,
        "pause": rules.can_pause(batch),
        "resume": rules.can_resume(batch),
        "cancel": rules.can_cancel(batch),
        "retry": rules.can_retry_failed(batch, retried=facts.get("retried"), under_way=facts.get("retry_under_way")),
        "rollback": rules.can_rollback(batch, undone=facts.get("undone"), under_way=facts.get("rollback_under_way")),
        "force_conflicts": _force_conflicts_verdict(batch),
    }


def _force_conflicts_verdict(batch: MigrationBatch) -> rules.Verdict:
    verdict = rules.can_force_conflicts(batch)
    if not verdict:
        return verdict  # refused on the batch alone: no need to read its migration's follow-ups
    assert batch.parent_id is not None  # the rule refuses a rollback without its migration
    parent = MigrationBatch.objects.get(pk=batch.parent_id)
    facts = batch_follow_ups(parent)
    return rules.can_force_conflicts(
        batch, left_to_undo=parent.succeeded - facts["undone"], under_way=facts["rollback_under_way"]
    )


def rollback_state(batch: MigrationBatch, undone: int) -> str:
    """'rolled back', 'partly rolled back' or '' for a migration batch whose rollbacks restored `undone`."""
    if batch.kind != MigrationBatch.Kind.MIGRATE or not undone:
        return ""
    return "rolled back" if undone >= batch.succeeded else "partly rolled back"


def _first_actor():
    """The actor of a batch's first audit event (its start): the name the audit log shows, e.g. cli:root."""
    return Subquery(AuditEvent.objects.filter(batch_id=OuterRef("pk")).order_by("pk").values("actor_label")[:1])


def batches_from(version: WorkflowVersion, limit: int = 20) -> list[MigrationBatch]:
    """The latest batches out of a version (previews apart), each with `started_by`, `rolled_back`
    and `queue_place` (1 for the next to start; None unless queued)."""
    rows: list[MigrationBatch] = list(
        MigrationBatch.objects.filter(source_version=version)
        .exclude(state=MigrationBatch.State.DRAFT)
        .select_related("target_version", "created_by")
        .annotate(started_by=_first_actor())[:limit]
    )
    undone = dict(
        MigrationBatch.objects.filter(parent_id__in=[row.pk for row in rows], kind=MigrationBatch.Kind.ROLLBACK)
        .order_by()
        .values_list("parent_id")
        .annotate(total=Sum("succeeded"))
    )
    queue = MigrationBatch.objects.filter(source_version=version, state=MigrationBatch.State.QUEUED)
    places = {pk: place for place, pk in enumerate(queue.order_by("queued_at", "pk").values_list("pk", flat=True), 1)}
    for row in rows:
        row.rolled_back = rollback_state(row, undone.get(row.pk, 0))  # type: ignore[attr-defined]
        row.queue_place = places.get(row.pk)  # type: ignore[attr-defined]
    return rows


def started_by(batch: MigrationBatch) -> str:
    """Who started a batch, as the audit log names them."""
    label = AuditEvent.objects.filter(batch=batch).order_by("pk").values_list("actor_label", flat=True).first()
    return label or (batch.created_by.get_username() if batch.created_by else "system")


def batch_failures(batch: MigrationBatch, limit: int = 100) -> list[BatchItem]:
    """Items that did not go through (failed, conflict, skipped), with their errors, in id order."""
    if not (batch.failed or batch.skipped or batch.conflicts):
        return []  # the counters say so: no scan of a batch's items for rows that are not there
    outcomes = [BatchItem.State.FAILED, BatchItem.State.SKIPPED, BatchItem.State.CONFLICT]  # deferred: not done
    return list(BatchItem.objects.filter(batch=batch, state__in=outcomes).order_by("pk")[:limit])


def instance_history(instance: WorkflowInstance) -> list[BatchItem]:
    """Every migration and rollback of an instance, newest first, with its batch (who, when, from, to)."""
    first_actor = AuditEvent.objects.filter(batch_id=OuterRef("batch_id")).order_by("pk").values("actor_label")[:1]
    return list(
        BatchItem.objects.filter(instance=instance)
        .exclude(state__in=BatchItem.UNDECIDED)
        .select_related("batch", "batch__created_by", "from_version", "to_version")
        .annotate(started_by=Subquery(first_actor))
        .order_by("-pk")
    )


# --- rollouts -----------------------------------------------------------------------------------------
def rollout_timeline(rollout: Rollout, width: int = 560, height: int = 120) -> dict:
    """The ramp over time as SVG step-line points, the events, and the latest gate figures."""
    events = list(listings.rollout_events(rollout))
    end = rollout.finished_at or timezone.now()
    span = max((end - rollout.started_at).total_seconds(), 1)

    def x(moment) -> float:
        return round((moment - rollout.started_at).total_seconds() / span * width, 1)

    points, percent = [], 0
    for event in events:
        points += [f"{x(event.at)},{height - percent / 100 * height:.1f}"]
        percent = event.percent
        points += [f"{x(event.at)},{height - percent / 100 * height:.1f}"]
    points.append(f"{width},{height - percent / 100 * height:.1f}")
    gates: list[dict[str, Any]] = next((e.figures for e in reversed(events) if e.figures), [])
    return {"events": events, "points": " ".join(points), "gates": gates, "width": width, "height": height}


def active_rollouts(workflow_id: int | None = None) -> list[Rollout]:
    rows = Rollout.objects.filter(state__in=[Rollout.State.RUNNING, Rollout.State.PAUSED]).select_related(
        "workflow", "target_version", "previous_version"
    )
    return list(rows.filter(workflow_id=workflow_id) if workflow_id is not None else rows)
