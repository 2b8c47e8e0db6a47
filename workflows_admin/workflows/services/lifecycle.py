"""Version lifecycle: which version is current, draining of old versions, retirement."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from workflows_admin.engine import InvalidVersion, Version

from .. import counters
from ..models import IN_FLIGHT_STATUSES, InstanceCount, Workflow, WorkflowInstance, WorkflowVersion
from ..rules import can_drain, can_make_current, can_ramp, can_retire, warm_versions
from . import audit
from .audit import Actor
from .errors import InvalidInput, NotFound
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


def any_in_flight(version_id: int) -> bool:
    """Whether the version has anything in flight, from the trigger-kept counters (exact, in step
    with the rows): asked at every boundary that leaves a draining version, a probe of the
    instances' index walked past the entry of every instance that had left it (dead until a
    vacuum), a cost that grew with each one. The SQLite demo probes its rows."""
    if not counters.maintained(connection):
        return WorkflowInstance.objects.filter(version_id=version_id, status__in=IN_FLIGHT_STATUSES).exists()
    # One plain statement: built through the ORM, the query cost more than running it.
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM {InstanceCount._meta.db_table} "
            "WHERE version_id = %s AND status = ANY(%s) AND n > 0)",
            [version_id, list(IN_FLIGHT_STATUSES)],
        )
        return bool(cursor.fetchone()[0])


def _lock_versions(version: WorkflowVersion) -> dict[int, WorkflowVersion]:
    """Lock all versions of the workflow, so two lifecycle changes never interleave."""
    rows = (
        WorkflowVersion.objects.select_for_update().filter(workflow_id=version.workflow_id).select_related("workflow")
    )
    return {row.pk: row for row in rows}


def _set_state(version: WorkflowVersion, state: str, now: datetime) -> None:
    version.state = state
    version.state_changed_at = now
    if state == State.DRAINED:
        version.drained_at = now
    elif state == State.DRAINING:
        version.drained_at = None  # drained again later, when its instances are done
    if state == State.RETIRED:
        version.retired_at = now
    version.save(update_fields=["state", "state_changed_at", "drained_at", "retired_at"])


def _retire_from_service(version: WorkflowVersion, now: datetime) -> int:
    """A version that stops taking new starts drains, or is drained at once when nothing is in flight.
    Returns how many instances are in flight."""
    in_flight = _in_flight(version)
    _set_state(version, State.DRAINING if in_flight else State.DRAINED, now)
    return in_flight


def mark_drained_when_empty(
    version_id: int, *, why: str = "its last in-flight instance finished", actor: Actor = "system:runtime"
) -> bool:
    """Called when instances left a version (in or after the transaction that moved them): a draining
    version with nothing left in flight becomes drained. `why` says how they left, for the audit log.

    The version row is locked before counting, so of two instances finishing at once the second
    to commit sees the first one's change and makes the transition.
    """
    if not WorkflowVersion.objects.filter(pk=version_id, state=State.DRAINING).exists():
        return False
    with transaction.atomic():
        version = WorkflowVersion.objects.select_for_update().select_related("workflow").get(pk=version_id)
        if version.state != State.DRAINING or any_in_flight(version.pk):
            return False
        _set_state(version, State.DRAINED, timezone.now())
        audit.record(
            "version.drained",
            actor=actor,
            workflow=version.workflow,
            version=version,
            message=f"{version} is drained: {why}",
        )
    return True


def reopen_if_drained(version_ids: Iterable[int], *, why: str, actor: Actor, batch: Any = None) -> list[int]:
    """Called in the transaction that moved instances onto versions: a drained version that now has
    instances in flight is draining again (drained means nothing in flight), audited with `why`.
    Returns the ids of the versions reopened.

    Each version row is locked before counting (in id order), so a version emptied and refilled by
    two transactions at once ends in the state its instances say. The lock is FOR NO KEY UPDATE: the
    caller (and a parallel chunk of its batch) holds the FOR KEY SHARE that pointing instances at the
    version takes, which a plain FOR UPDATE would wait for (two chunks, each waiting for the other).
    """
    drained = WorkflowVersion.objects.filter(pk__in=list(version_ids), state=State.DRAINED)
    candidates = sorted(drained.values_list("pk", flat=True))
    reopened = []
    for version_id in candidates:
        with transaction.atomic():
            version = (
                WorkflowVersion.objects.select_for_update(no_key=True, of=("self",))
                .select_related("workflow")
                .get(pk=version_id)
            )
            if version.state != State.DRAINED or not any_in_flight(version.pk):
                continue
            in_flight = _in_flight(version)  # once, for the audit: only when it really reopens
            _set_state(version, State.DRAINING, timezone.now())
            audit.record(
                "version.draining",
                actor=actor,
                workflow=version.workflow,
                version=version,
                batch=batch,
                message=f"{version} is draining again: {why}; {in_flight} instance(s) in flight",
                details={"in_flight": in_flight, **({"batch": batch.pk} if batch is not None else {})},
            )
            reopened.append(version_id)
    return reopened


@retry_on_deadlock()
def make_current(version: WorkflowVersion, *, actor: Actor = None) -> WorkflowVersion:
    """Send new starts to `version`; the previous current version starts draining. Running instances stay."""
    now = timezone.now()
    with transaction.atomic():
        versions = _lock_versions(version)
        target = versions[version.pk]
        can_make_current(target).require(field="version")
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
        from .upgrades import refresh_upgrade_targets  # upgrades builds on the batch executor, which uses this module

        refresh_upgrade_targets(target.workflow_id)  # auto-upgrade versions now move their instances here
    return target


@retry_on_deadlock()
def drain(version: WorkflowVersion, *, actor: Actor = None) -> WorkflowVersion:
    """Stop new starts on a non-current version; it becomes drained once nothing is in flight."""
    now = timezone.now()
    with transaction.atomic():
        target = _lock_versions(version)[version.pk]
        can_drain(target).require(field="version")
        if target.state == State.RAMPING:
            target.workflow.ramp_percent = 0
            target.workflow.save(update_fields=["ramp_percent"])
        in_flight = _retire_from_service(target, now)
        audit.record(
            # "drained" only once nothing is in flight; until then the version is draining.
            "version.draining" if in_flight else "version.drained",
            actor=actor,
            workflow=target.workflow,
            version=target,
            message=f"{target} is draining: {in_flight} instance(s) in flight"
            if in_flight
            else f"{target} is drained: nothing was in flight",
            details={"in_flight": in_flight},
        )
    return target


@retry_on_deadlock()
def retire(version: WorkflowVersion, *, actor: Actor = None) -> WorkflowVersion:
    """Retire a version with nothing in flight; refused, with the count, while instances remain."""
    now = timezone.now()
    with transaction.atomic():
        versions = _lock_versions(version)
        target = versions[version.pk]
        warm = target.pk in warm_versions(versions.values())
        can_retire(target, in_flight=_in_flight(target), warm=warm).require(field="version")
        _set_state(target, State.RETIRED, now)
        audit.record(
            "version.retired", actor=actor, workflow=target.workflow, version=target, message=f"{target} is retired"
        )
    return target


@retry_on_deadlock()
def set_ramp(version: WorkflowVersion, percent: int | str, *, actor: Actor = None) -> WorkflowVersion:
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
        other = next((v for v in versions.values() if v.state == State.RAMPING and v.pk != target.pk), None)
        can_ramp(target, other_ramping=other, ramp_percent=workflow.ramp_percent, percent=percent).require(
            field="version"
        )
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
