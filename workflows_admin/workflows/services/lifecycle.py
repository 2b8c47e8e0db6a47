"""Version lifecycle: which version is current, draining of old versions, retirement."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from workflows_admin.engine import InvalidVersion, Version

from ..models import IN_FLIGHT_STATUSES, Workflow, WorkflowInstance, WorkflowVersion
from . import audit
from .errors import Conflict, InvalidInput, NotFound
from .numbers import parse_whole_number
from .retries import retry_on_deadlock

State = WorkflowVersion.State


def check_workflow_name(name: Any) -> str:
    """A workflow name as given, or InvalidInput: printable text of at most 200 characters (which
    also keeps out what PostgreSQL cannot be sent, such as the lone surrogates a command line can
    carry for bytes that are not UTF-8)."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("workflow name is required", field="workflow")
    if len(name) > 200 or not name.isprintable():
        raise InvalidInput(
            f"workflow name '{name[:40]}' must be printable text of at most 200 characters", field="workflow"
        )
    return name


def get_version(workflow: str, version: str) -> WorkflowVersion:
    """The version row for a workflow name and a version label, or NotFound/InvalidInput naming the field."""
    check_workflow_name(workflow)
    if not Workflow.objects.filter(name=workflow).exists():
        known = ", ".join(Workflow.objects.values_list("name", flat=True)) or "none"
        raise NotFound(f"unknown workflow '{workflow}' (known: {known})", field="workflow")
    try:
        label = str(Version.parse(version))
    except InvalidVersion as exc:
        raise InvalidInput(str(exc), field="version") from None
    row = WorkflowVersion.objects.select_related("workflow").filter(workflow__name=workflow, version=label).first()
    if row is None:
        known = ", ".join(WorkflowVersion.objects.filter(workflow__name=workflow).values_list("version", flat=True))
        raise NotFound(f"workflow '{workflow}' has no version {label} (known: {known})", field="version")
    return row


def _in_flight(version: WorkflowVersion) -> int:
    return WorkflowInstance.objects.filter(version=version, status__in=IN_FLIGHT_STATUSES).count()


def _lock_versions(version: WorkflowVersion) -> dict[int, WorkflowVersion]:
    """Lock all versions of the workflow, so two lifecycle changes never interleave."""
    rows = (
        WorkflowVersion.objects.select_for_update().filter(workflow_id=version.workflow_id).select_related("workflow")
    )
    return {row.pk: row for row in rows}


def _set_state(version: WorkflowVersion, state: str, now) -> None:
    version.state = state
    version.state_changed_at = now
    if state == State.DRAINED:
        version.drained_at = now
    if state == State.RETIRED:
        version.retired_at = now
    version.save(update_fields=["state", "state_changed_at", "drained_at", "retired_at"])


def _retire_from_service(version: WorkflowVersion, now) -> None:
    """A version that stops taking new starts drains, or is drained at once when nothing is in flight."""
    _set_state(version, State.DRAINING if _in_flight(version) else State.DRAINED, now)


def mark_drained_when_empty(version_id: int) -> bool:
    """Called when an instance left a version (in or after the transaction that moved it): a draining
    version with nothing left in flight becomes drained.

    The version row is locked before counting, so of two instances finishing at once the second
    to commit sees the first one's change and makes the transition.
    """
    if not WorkflowVersion.objects.filter(pk=version_id, state=State.DRAINING).exists():
        return False
    with transaction.atomic():
        version = WorkflowVersion.objects.select_for_update().select_related("workflow").get(pk=version_id)
        if version.state != State.DRAINING or _in_flight(version):
            return False
        _set_state(version, State.DRAINED, timezone.now())
        audit.record(
            "version.drained",
            actor="system:runtime",
            workflow=version.workflow,
            version=version,
            message=f"{version} is drained: its last in-flight instance finished",
        )
    return True


@retry_on_deadlock()
def make_current(version: WorkflowVersion, *, actor: Any = None) -> WorkflowVersion:
    """Send new starts to `version`; the previous current version starts draining. Running instances stay."""
    now = timezone.now()
    with transaction.atomic():
        versions = _lock_versions(version)
        target = versions[version.pk]
        if target.state == State.CURRENT:
            raise Conflict(f"{target} is already current", field="version")
        if target.state == State.RETIRED:
            raise Conflict(f"{target} is retired; a retired version cannot become current", field="version")
        if not target.has_code:
            raise Conflict(
                f"{target} has no code in this deployment; deploy it before making it current", field="version"
            )
        previous = next((v for v in versions.values() if v.state == State.CURRENT), None)
        if previous is not None:
            _retire_from_service(previous, now)
        if target.state == State.RAMPING:
            target.workflow.ramp_percent = 0
            target.workflow.save(update_fields=["ramp_percent"])
        _set_state(target, State.CURRENT, now)
        audit.record(
            "version.made_current",
            actor=actor,
            workflow=target.workflow,
            version=target,
            message=f"{target} is current" + (f"; {previous.version} is {previous.state}" if previous else ""),
            details={"previous": previous.version if previous else None},
        )
    return target


@retry_on_deadlock()
def drain(version: WorkflowVersion, *, actor: Any = None) -> WorkflowVersion:
    """Stop new starts on a non-current version; it becomes drained once nothing is in flight."""
    now = timezone.now()
    with transaction.atomic():
        target = _lock_versions(version)[version.pk]
        if target.state == State.CURRENT:
            raise Conflict(f"{target} is current; make another version current first, then it drains", field="version")
        if target.state in (State.DRAINING, State.DRAINED, State.RETIRED):
            raise Conflict(f"{target} is already {target.state}", field="version")
        if target.state == State.RAMPING:
            target.workflow.ramp_percent = 0
            target.workflow.save(update_fields=["ramp_percent"])
        _retire_from_service(target, now)
        audit.record(
            "version.drained",
            actor=actor,
            workflow=target.workflow,
            version=target,
            message=f"{target} is {target.state}",
        )
    return target


def _warm_versions(versions) -> set[int]:
    """The newest WORKFLOWS_WARM_VERSIONS versions older than the current one that have code: rollback targets."""
    versions = list(versions)
    current = next((v for v in versions if v.state == State.CURRENT), None)
    if current is None:
        return set()
    older = sorted(
        (v for v in versions if v.has_code and v.state != State.RETIRED and v.parsed < current.parsed),
        key=lambda v: v.parsed,
        reverse=True,
    )
    return {v.pk for v in older[: settings.WORKFLOWS_WARM_VERSIONS]}


@retry_on_deadlock()
def retire(version: WorkflowVersion, *, actor: Any = None) -> WorkflowVersion:
    """Retire a version with nothing in flight; refused, with the count, while instances remain."""
    now = timezone.now()
    with transaction.atomic():
        versions = _lock_versions(version)
        target = versions[version.pk]
        if target.state == State.RETIRED:
            raise Conflict(f"{target} is already retired", field="version")
        if target.state in (State.CURRENT, State.RAMPING):
            raise Conflict(
                f"{target} is {target.state}; make another version current before retiring it", field="version"
            )
        in_flight = _in_flight(target)
        if in_flight:
            raise Conflict(
                f"{target} still has {in_flight} instance(s) in flight; migrate them or let them finish first",
                field="version",
            )
        warm = _warm_versions(versions.values())
        if target.pk in warm:
            raise Conflict(
                f"{target} is kept warm as a rollback target: the {settings.WORKFLOWS_WARM_VERSIONS} newest "
                "versions before the current one keep their code and can take instances back; it can be retired "
                "once newer releases push it out (WORKFLOWS_WARM_VERSIONS)",
                field="version",
            )
        _set_state(target, State.RETIRED, now)
        audit.record(
            "version.retired", actor=actor, workflow=target.workflow, version=target, message=f"{target} is retired"
        )
    return target


@retry_on_deadlock()
def set_ramp(version: WorkflowVersion, percent: int | str, *, actor: Any = None) -> WorkflowVersion:
    """Send `percent` % of new starts (0..100) to `version`, which becomes ramping; 0 returns it to active.

    Only one version of a workflow ramps at a time, and the current version cannot ramp (it already
    takes every start that does not go to the ramping one); a draining or drained version may ramp again
    (a rollout resumed after a rollback). Instances already started keep their version.
    """
    percent = parse_whole_number(percent, "percent", minimum=0, maximum=100)
    now = timezone.now()
    with transaction.atomic():
        versions = _lock_versions(version)
        target = versions[version.pk]
        workflow = target.workflow
        if target.state == State.CURRENT:
            raise Conflict(
                f"{target} is current and takes every start not sent to a ramp; it cannot ramp", field="version"
            )
        if target.state == State.RETIRED:
            raise Conflict(f"{target} is retired; a retired version cannot ramp", field="version")
        if not target.has_code:
            raise Conflict(f"{target} has no code in this deployment; deploy it before ramping", field="version")
        other = next((v for v in versions.values() if v.state == State.RAMPING and v.pk != target.pk), None)
        if other is not None:
            raise Conflict(
                f"{other} is already ramping at {workflow.ramp_percent}%; set its ramp to 0 first", field="version"
            )
        if percent == 0 and target.state != State.RAMPING:
            raise Conflict(f"{target} is not ramping; there is no ramp to stop", field="percent")
        previous = workflow.ramp_percent if target.state == State.RAMPING else 0
        workflow.ramp_percent = percent
        workflow.save(update_fields=["ramp_percent"])
        _set_state(target, State.RAMPING if percent else State.ACTIVE, now)
        audit.record(
            "version.ramp_set",
            actor=actor,
            workflow=workflow,
            version=target,
            message=f"{target} takes {percent}% of new starts" if percent else f"{target} stopped ramping",
            details={"percent": percent, "previous_percent": previous},
        )
    return target
