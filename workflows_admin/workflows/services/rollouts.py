"""Progressive rollout: ramp a new version up on a schedule while health gates on its own instances pass,
and halt (ramp back to 0, handle its instances) the moment one breaks.

Gates are measured on the target version only, over the window since the last advance:
- step_failure_rate: failed or retrying step runs / finished step runs
- retries_per_step: retrying step runs / finished step runs
- parked_or_failed: instances started on the target that are parked or failed / instances started
- contract_violations: step runs failed on a contract violation / finished step runs
A gate with fewer samples than its minimum neither advances nor halts the rollout. Every decision is a
RolloutEvent (the timeline) and an AuditEvent, each with the figures that made it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypedDict

from django.db import DatabaseError, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from ..models import (
    IN_FLIGHT_STATUSES,
    InstanceStatus,
    Rollout,
    RolloutEvent,
    StepRun,
    WorkflowInstance,
    WorkflowVersion,
)
from ..runtime import migration_path_problem
from . import audit, lifecycle, verification
from .audit import Actor
from .errors import Conflict, InvalidInput, ServiceError
from .lookup import row_by_id
from .numbers import MAX_INT_COLUMN, parse_whole_number
from .retries import retry_on_deadlock

METRICS = ("step_failure_rate", "retries_per_step", "parked_or_failed", "contract_violations")
MAX_INTERVAL_SECONDS = MAX_INT_COLUMN  # the column is a PostgreSQL integer
State = Rollout.State
logger = logging.getLogger(__name__)


class Gate(TypedDict):
    """A health gate as parse_gates normalises it and Rollout.gates keeps it."""

    metric: str
    threshold: float
    min_samples: int


class GateResult(Gate):
    """A gate measured over the window since the last advance: what the timeline's figures hold."""

    value: float | None  # None: no sample
    samples: int
    verdict: str  # pass / breach / insufficient


def parse_gates(raw: Any) -> list[Gate]:
    """[{metric, threshold, min_samples}] validated; the text form "metric<=0.05:min=20" is accepted too."""
    if isinstance(raw, str):
        raw = [part for part in raw.split(",") if part.strip()]
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("gates must be a non-empty list, e.g. step_failure_rate<=0.05:min=20", field="gates")
    gates: list[Gate] = []
    for gate in raw:
        if isinstance(gate, str):
            try:
                rule, with_minimum, minimum = gate.strip().partition(":min=")
                metric, limit = rule.split("<=")
                # "min=" typed with no number is a mistake to point out, not a request for the default.
                samples = minimum if with_minimum else 10
                gate = {"metric": metric.strip(), "threshold": limit, "min_samples": samples}
            except ValueError:
                raise InvalidInput(
                    f"gate {gate!r} is not of the form metric<=threshold[:min=N]", field="gates"
                ) from None
        if not isinstance(gate, dict) or gate.get("metric") not in METRICS:
            raise InvalidInput(f"gate {gate!r}: metric must be one of {', '.join(METRICS)}", field="gates")
        try:
            threshold = float(gate["threshold"])
        except (KeyError, TypeError, ValueError):
            raise InvalidInput(f"gate {gate!r}: threshold must be a number", field="gates") from None
        if not math.isfinite(threshold) or threshold < 0:  # JSON has no NaN or infinity
            raise InvalidInput(f"gate {gate!r}: threshold must be a finite number >= 0", field="gates")
        min_samples = parse_whole_number(
            gate.get("min_samples", 10), "gates", minimum=1, maximum=MAX_INT_COLUMN, label=f"gate {gate!r}: min_samples"
        )
        gates.append({"metric": gate["metric"], "threshold": threshold, "min_samples": min_samples})
    return gates


def _record(
    rollout: Rollout,
    decision: str,
    now: datetime,
    *,
    figures: Sequence[GateResult] = (),
    message: str = "",
    actor: Actor = "system:rollout",
    details: dict[str, Any] | None = None,
) -> None:
    RolloutEvent.objects.create(
        rollout=rollout,
        at=now,
        decision=decision,
        percent=rollout.current_percent,
        figures=list(figures),
        message=message,
    )
    audit.record(
        f"rollout.{decision}",
        actor=actor,
        workflow_id=rollout.workflow_id,
        version=rollout.target_version,
        message=f"rollout #{rollout.pk} of {rollout.target_version}: {message}",
        details={
            "rollout": rollout.pk,
            "percent": rollout.current_percent,
            "figures": list(figures),
            **(details or {}),
        },
    )


def start_rollout(
    workflow: str,
    target: str,
    *,
    strategy: str,
    gates: Any,
    step_percent: int = 10,
    canary_percent: int = 10,
    interval_seconds: int = 600,
    on_breach: str = Rollout.OnBreach.KEEP,
    actor: Actor = None,
    now: datetime | None = None,
    skip_verification: str | None = None,
) -> Rollout:
    """Start a rollout once the verification of its target on the live instances passed (or, with a
    reason, was skipped: audited); a failed verification refuses the start with its report
    (verification.VerificationFailed)."""
    now = now or timezone.now()
    version = lifecycle.get_version(workflow, target)
    if strategy not in Rollout.Strategy.values:
        raise InvalidInput(f"strategy must be one of {', '.join(Rollout.Strategy.values)}", field="strategy")
    if on_breach not in Rollout.OnBreach.values:
        raise InvalidInput(f"on_breach must be one of {', '.join(Rollout.OnBreach.values)}", field="on_breach")
    step_percent = parse_whole_number(step_percent, "step_percent", minimum=1, maximum=99)
    canary_percent = parse_whole_number(canary_percent, "canary_percent", minimum=1, maximum=99)
    interval_seconds = parse_whole_number(interval_seconds, "interval_seconds", minimum=1, maximum=MAX_INTERVAL_SECONDS)
    parsed_gates = parse_gates(gates)
    skip = verification.skip_reason(skip_verification)
    try:
        with transaction.atomic():
            previous = version.workflow.versions.filter(state="current").first()
            if previous is None or previous.pk == version.pk:
                raise Conflict(
                    f"{version} is already current (or there is no current version to roll out from)", field="version"
                )
            if on_breach == Rollout.OnBreach.MIGRATE_BACK:
                # Found out now, not at the breach, when the halt would have nowhere to send the instances.
                problem = migration_path_problem(workflow, version.version, previous.version)
                if problem:
                    raise InvalidInput(
                        f"on_breach migrate_back needs a migration path from {version.version} back to "
                        f"{previous.version}: {problem}; or choose on_breach park or keep",
                        field="on_breach",
                    )
            if Rollout.objects.filter(workflow=version.workflow, state__in=[State.RUNNING, State.PAUSED]).exists():
                raise Conflict(
                    f"workflow '{workflow}' already has a rollout running; pause or abort it first", field="workflow"
                )
            # Last before the writes, so the start is refused for the reasons above first. It only reads;
            # a failure raises VerificationFailed and rolls this transaction back.
            verified = verification.gate_rollout(workflow, target, skip=skip)
            rollout = Rollout.objects.create(
                workflow=version.workflow,
                target_version=version,
                previous_version=previous,
                strategy=strategy,
                step_percent=step_percent,
                canary_percent=canary_percent,
                interval_seconds=interval_seconds,
                gates=parsed_gates,
                on_breach=on_breach,
                started_at=now,
                last_advanced_at=now,
                created_by=audit.actor_user(actor),
            )
            first = {"linear": step_percent, "canary": canary_percent, "all_at_once": 100}[strategy]
            _record_verification(rollout, verified, now, actor)
            _set_percent(rollout, first, actor, now)
            started = f"{strategy} rollout from {previous.version} at {first}%"
            _record(rollout, "start", now, message=started, actor=actor)
            if first == 100:
                _complete(rollout, actor, now, "all at once")
    except verification.VerificationFailed as refused:
        # Nothing of the start was written; the refusal is audited, with the report's figures.
        verification.record_refusal(version, refused.report, actor)
        raise
    return rollout


def _record_verification(rollout: Rollout, verified: dict[str, Any], now: datetime, actor: Actor) -> None:
    """The gate's result is the timeline's first entry; a skip is audited with who and why."""
    if verified["skipped"]:
        _record(
            rollout,
            "verify_skipped",
            now,
            message=f"verification skipped by {audit.actor_label(actor)}: {verified['reason']}",
            actor=actor,
            details={"reason": verified["reason"]},
        )
    else:
        _record(rollout, "verify", now, message=f"verification passed: {verified['summary']}", actor=actor)


def _set_percent(rollout: Rollout, percent: int, actor: Actor, now: datetime) -> None:
    if percent >= 100:
        return
    lifecycle.set_ramp(rollout.target_version, percent, actor=actor)
    rollout.current_percent = percent
    rollout.save(update_fields=["current_percent"])


def _complete(rollout: Rollout, actor: Actor, now: datetime, why: str) -> None:
    lifecycle.make_current(rollout.target_version, actor=actor)
    rollout.current_percent, rollout.state, rollout.finished_at = 100, State.COMPLETED, now
    rollout.save(update_fields=["current_percent", "state", "finished_at"])
    _record(rollout, "complete", now, message=f"{rollout.target_version.version} is current ({why})", actor=actor)


def evaluate_gates(rollout: Rollout, now: datetime) -> list[GateResult]:
    """Each gate's value on the target version since the last advance, its samples and verdict."""
    since = rollout.last_advanced_at
    runs = StepRun.objects.filter(version=rollout.target_version, finished_at__gt=since, finished_at__lte=now)
    run_counts = runs.aggregate(
        total=Count("id"),
        failed=Count("id", filter=Q(outcome__in=[StepRun.Outcome.FAILED, StepRun.Outcome.RETRYING])),
        retries=Count("id", filter=Q(outcome=StepRun.Outcome.RETRYING)),
        violations=Count("id", filter=Q(outcome=StepRun.Outcome.FAILED, error__startswith="contract violation")),
    )
    started = WorkflowInstance.objects.filter(version=rollout.target_version, created_at__gt=since, created_at__lte=now)
    instance_counts = started.aggregate(
        total=Count("id"), bad=Count("id", filter=Q(status__in=[InstanceStatus.PARKED, InstanceStatus.FAILED]))
    )
    measured = {
        "step_failure_rate": (run_counts["failed"], run_counts["total"]),
        "retries_per_step": (run_counts["retries"], run_counts["total"]),
        "contract_violations": (run_counts["violations"], run_counts["total"]),
        "parked_or_failed": (instance_counts["bad"], instance_counts["total"]),
    }
    results: list[GateResult] = []
    gates: list[Gate] = rollout.gates
    for gate in gates:
        hits, samples = measured[gate["metric"]]
        value = hits / samples if samples else None
        if samples < gate["min_samples"]:
            verdict = "insufficient"
        else:
            assert value is not None  # min_samples >= 1 (parse_gates): there were samples
            verdict = "breach" if value > gate["threshold"] else "pass"
        results.append(
            {**gate, "value": round(value, 4) if value is not None else None, "samples": samples, "verdict": verdict}
        )
    return results


def tick(rollout_id: int, now: datetime | None = None) -> str:
    """Decide for one rollout: advance, hold, halt or complete. Returns the decision."""
    now = now or timezone.now()
    with transaction.atomic():
        rollout = (
            Rollout.objects.select_for_update()
            .select_related("target_version__workflow", "previous_version")
            .get(pk=rollout_id)
        )
        if rollout.state != State.RUNNING:
            return rollout.state
        figures = evaluate_gates(rollout, now)
        breaches = [g for g in figures if g["verdict"] == "breach"]
        if not breaches:
            return _advance_or_hold(rollout, figures, now)
        _halt(rollout, figures, breaches, now)
    # The halt is committed (the ramp is at 0) before the instances are handled, which can fail.
    _handle_instances_after_halt(rollout, now)
    return "halt"


def _advance_or_hold(rollout: Rollout, figures: list[GateResult], now: datetime) -> str:
    """Every gate passes (or lacks samples): hold, advance a step, or complete."""
    interval_over = now - rollout.last_advanced_at >= timedelta(seconds=rollout.interval_seconds)
    if any(g["verdict"] == "insufficient" for g in figures) or not interval_over:
        last = rollout.events.order_by("-at", "-id").first()
        if last is None or last.decision != "hold" or last.figures != figures:
            _record(
                rollout,
                "hold",
                now,
                figures=figures,
                message="waiting for enough samples" if interval_over else "interval not over yet",
            )
        return "hold"
    step = rollout.step_percent if rollout.strategy == Rollout.Strategy.LINEAR else 100
    target = min(100, rollout.current_percent + step)
    rollout.last_advanced_at = now
    rollout.save(update_fields=["last_advanced_at"])
    if target >= 100:
        _complete(rollout, "system:rollout", now, "every gate passed")
        return "complete"
    _set_percent(rollout, target, "system:rollout", now)
    _record(rollout, "advance", now, figures=figures, message=f"gates passed: ramp to {target}%")
    return "advance"


def _halt(rollout: Rollout, figures: list[GateResult], breaches: list[GateResult], now: datetime) -> None:
    """New starts go back to the previous version: nothing else happens in this transaction, so
    nothing that fails later can keep the ramp up."""
    target = rollout.target_version
    target.refresh_from_db(fields=["state"])
    if target.state == WorkflowVersion.State.RAMPING:  # an operator may have stopped the ramp already
        lifecycle.set_ramp(target, 0, actor="system:rollout")
    names = ", ".join(f"{g['metric']} {g['value']} > {g['threshold']}" for g in breaches)
    rollout.state, rollout.halted_reason, rollout.finished_at = State.HALTED, names, now
    rollout.current_percent = 0
    rollout.save(update_fields=["state", "halted_reason", "finished_at", "current_percent"])
    _record(
        rollout,
        "halt",
        now,
        figures=figures,
        message=f"halted: {names}; new starts go to {rollout.previous_version.version} again",
    )


def _handle_instances_after_halt(rollout: Rollout, now: datetime) -> None:
    """The plan's on_breach for the target's instances, in a transaction of its own; the outcome,
    failure included, is on the timeline and in the audit log."""
    try:
        with transaction.atomic():
            handled = _handle_instances(rollout)
            _record(rollout, "on_breach", now, message=f"on_breach {rollout.on_breach}: {handled}")
    except (ServiceError, DatabaseError) as exc:
        logger.exception("rollout #%s: on_breach %s failed after the halt", rollout.pk, rollout.on_breach)
        reason = exc.message if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {exc}"
        _record(
            rollout,
            "on_breach_failed",
            now,
            message=f"on_breach {rollout.on_breach} failed: {reason}; the ramp is at 0, so only the instances "
            f"already on {rollout.target_version.version} are affected: migrate, park or cancel them by hand",
        )


def _handle_instances(rollout: Rollout) -> str:
    in_flight = WorkflowInstance.objects.filter(version=rollout.target_version, status__in=IN_FLIGHT_STATUSES)
    if rollout.on_breach == Rollout.OnBreach.MIGRATE_BACK:
        from .batches import start_migration

        if not in_flight.exists():
            return "no instance to migrate back"
        batch = start_migration(
            rollout.workflow.name,
            source=rollout.target_version.version,
            target=rollout.previous_version.version,
            actor="system:rollout",
            selection={"statuses": [str(s) for s in IN_FLIGHT_STATUSES]},
        )
        waits = f" ({batch.get_state_display().lower()})" if batch.state != batch.State.RUNNING else ""
        return f"migrating {batch.total} instance(s) back in batch #{batch.pk}{waits}"
    if rollout.on_breach == Rollout.OnBreach.PARK:
        reason = f"parked by rollout #{rollout.pk}: {rollout.halted_reason}; migrate or resume it"
        ids = list(in_flight.select_for_update().values_list("pk", flat=True))
        parked = (
            WorkflowInstance.objects.filter(pk__in=ids)
            .exclude(status=InstanceStatus.PARKED)
            .update(
                status=InstanceStatus.PARKED,
                status_reason=reason,
                lease_expires_at=None,
                revision=F("revision") + 1,
                updated_at=timezone.now(),
            )
        )
        return f"parked {parked} instance(s)"
    return f"kept {in_flight.count()} instance(s) running"


def tick_rollouts(now: datetime | None = None) -> dict[int, str]:
    return {pk: tick(pk, now) for pk in Rollout.objects.filter(state=State.RUNNING).values_list("pk", flat=True)}


# An operator's change to a locked rollout: applies it, returns the timeline's message.
type Change = Callable[[Rollout, datetime], str]


def _operator_action(
    rollout_id: Any, decision: str, allowed: tuple[str, ...], actor: Actor, now: datetime | None, change: Change
) -> Rollout:
    now = now or timezone.now()
    with transaction.atomic():
        rollout = row_by_id(
            Rollout.objects.select_for_update().select_related("target_version__workflow"), rollout_id, "rollout"
        )
        if rollout.state not in allowed:
            raise Conflict(f"rollout #{rollout.pk} is {rollout.state}; cannot {decision}", field="rollout")
        message = change(rollout, now)
        if rollout.state != State.COMPLETED:
            _record(rollout, decision, now, message=message, actor=actor)
    return rollout


@retry_on_deadlock()
def pause_rollout(rollout_id: Any, *, actor: Actor = None, now: datetime | None = None) -> Rollout:
    def change(rollout: Rollout, now: datetime) -> str:
        rollout.state = State.PAUSED
        rollout.save(update_fields=["state"])
        return f"paused at {rollout.current_percent}%"

    return _operator_action(rollout_id, "pause", (State.RUNNING,), actor, now, change)


@retry_on_deadlock()
def resume_rollout(rollout_id: Any, *, actor: Actor = None, now: datetime | None = None) -> Rollout:
    def change(rollout: Rollout, now: datetime) -> str:
        rollout.state, rollout.last_advanced_at = State.RUNNING, now  # the gates are measured afresh
        rollout.save(update_fields=["state", "last_advanced_at"])
        return f"resumed at {rollout.current_percent}%"

    return _operator_action(rollout_id, "resume", (State.PAUSED,), actor, now, change)


@retry_on_deadlock()
def abort_rollout(rollout_id: Any, *, actor: Actor = None, now: datetime | None = None) -> Rollout:
    def change(rollout: Rollout, now: datetime) -> str:
        lifecycle.set_ramp(rollout.target_version, 0, actor=actor)
        rollout.state, rollout.finished_at, rollout.current_percent = State.ABORTED, now, 0
        rollout.save(update_fields=["state", "finished_at", "current_percent"])
        return "aborted: new starts go to the previous version again"

    return _operator_action(rollout_id, "abort", (State.RUNNING, State.PAUSED), actor, now, change)


@retry_on_deadlock()
def promote_rollout(rollout_id: Any, *, actor: Actor = None, now: datetime | None = None) -> Rollout:
    def change(rollout: Rollout, now: datetime) -> str:
        _complete(rollout, actor, now, "promoted by an operator")
        return "promoted"

    return _operator_action(rollout_id, "promote", (State.RUNNING, State.PAUSED), actor, now, change)
