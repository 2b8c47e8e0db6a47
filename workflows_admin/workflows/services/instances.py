"""Starting instances and acting on one: signal, cancel, force-complete."""

from __future__ import annotations

from typing import Any, cast

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from workflows_admin.engine import InvalidVersion, Version, VersionDef
from workflows_admin.engine.contracts import check_json_object, has_lone_surrogate, storable_text
from workflows_admin.engine.routing import choose_version

from ..bulk import bulk_insert_rows
from ..models import IN_FLIGHT_STATUSES, InstanceStatus, Workflow, WorkflowInstance, WorkflowVersion
from ..runtime import get_registry
from . import audit, lifecycle
from .audit import Actor
from .dispatch import enqueue_step, enqueue_steps
from .errors import Conflict, InvalidInput, NotFound
from .lookup import row_by_id
from .retries import retry_on_deadlock

START_KEY_LENGTH = cast(int, WorkflowInstance._meta.get_field("start_key").max_length)

STARTABLE_STATES = (
    WorkflowVersion.State.ACTIVE,
    WorkflowVersion.State.CURRENT,
    WorkflowVersion.State.RAMPING,
)


def check_context(context: Any, *, field: str = "context") -> None:
    try:
        check_json_object(context, settings.WORKFLOWS_MAX_CONTEXT_BYTES)
    except ValueError as exc:
        raise InvalidInput(f"{field}: {exc}", field=field) from None


def _workflow(name: str) -> Workflow:
    workflow = Workflow.objects.filter(name=lifecycle.check_workflow_name(name)).first()
    if workflow is None:
        known = ", ".join(Workflow.objects.values_list("name", flat=True)) or "none"
        raise NotFound(f"unknown workflow '{name}' (known: {known})", field="workflow")
    return workflow


def _code_for(version: WorkflowVersion) -> VersionDef:
    definition = get_registry().find_version(version.workflow.name, version.version)
    if definition is None:
        raise Conflict(
            f"{version} has no code in this deployment; start on a version that has, or deploy its code",
            field="version",
        )
    return definition


def _routed_version(
    workflow: Workflow, versions: dict[str, WorkflowVersion], version: str | None, start_key: str
) -> WorkflowVersion:
    if version is not None:
        try:
            label = str(Version.parse(version))
        except InvalidVersion as exc:
            raise InvalidInput(str(exc), field="version") from None
        if label not in versions:
            known = ", ".join(sorted(versions, key=Version.parse))
            raise NotFound(f"workflow '{workflow.name}' has no version {label} (known: {known})", field="version")
        chosen = versions[label]
        if chosen.state not in STARTABLE_STATES:
            raise Conflict(
                f"{chosen} is {chosen.state} and takes no new starts; start on the current version instead",
                field="version",
            )
        return chosen
    current = next((v for v in versions.values() if v.state == WorkflowVersion.State.CURRENT), None)
    if current is None:
        raise Conflict(f"workflow '{workflow.name}' has no current version; make one current first", field="version")
    ramping = next((v for v in versions.values() if v.state == WorkflowVersion.State.RAMPING), None)
    label = choose_version(
        workflow.name, current.version, ramping.version if ramping else None, workflow.ramp_percent, start_key or None
    )
    return versions[label]


@retry_on_deadlock()
def start_workflows(
    name: str,
    contexts: list[dict[str, Any]],
    *,
    version: str | None = None,
    start_keys: list[str] | None = None,
    actor: Actor = None,
) -> list[WorkflowInstance]:
    """Start many instances in one transaction and one INSERT; each is routed and checked on its own.

    Any bad context refuses the whole call (naming its position), so nothing half-starts. Starts an
    `actor` asks for (an API call) are audited, one event per instance; the code's own are not.
    """
    if not isinstance(contexts, list):
        raise InvalidInput("contexts must be a list of JSON objects", field="contexts")
    start_keys = start_keys or [""] * len(contexts)
    if len(start_keys) != len(contexts):
        raise InvalidInput("start_keys must have one key per context", field="start_keys")
    workflow = _workflow(name)
    with transaction.atomic():
        versions = _versions_for_starts(workflow)
        instances = _routed_instances(workflow, versions, contexts, start_keys, version)
        bulk_insert_rows(instances)
        if actor is not None:
            audit.record_per_instance(
                "instance.started",
                [instance.pk for instance in instances],
                actor=actor,
                workflow_id=workflow.pk,
                message=f"started {len(instances)} instance(s) of {workflow.name}",
            )
        enqueue_steps((instance.pk, instance.revision) for instance in instances)
    return instances


def _versions_for_starts(workflow: Workflow) -> dict[str, WorkflowVersion]:
    """The workflow's versions by label, read FOR SHARE until the starts commit: starts run side by
    side, while a lifecycle change (FOR UPDATE) waits for them, and they for it. A drain then counts
    these starts, and a start never lands on a version a drain has just closed to starts."""
    lock = " FOR SHARE" if connection.vendor == "postgresql" else ""  # SQLite (the demo) writes one at a time
    rows = WorkflowVersion.objects.raw(
        f"SELECT * FROM {WorkflowVersion._meta.db_table} WHERE workflow_id = %s{lock}", [workflow.pk]
    )
    versions = {}
    for row in rows:
        row.workflow = workflow
        versions[row.version] = row
    return versions


def _routed_instances(
    workflow: Workflow,
    versions: dict[str, WorkflowVersion],
    contexts: list[dict[str, Any]],
    start_keys: list[str],
    version: str | None,
) -> list[WorkflowInstance]:
    now = timezone.now()
    instances = []
    code_by_version: dict[int, VersionDef] = {}
    for position, (context, start_key) in enumerate(zip(contexts, start_keys, strict=True)):
        field = "context" if len(contexts) == 1 else f"contexts[{position}]"
        check_context(context, field=field)
        if (
            not isinstance(start_key, str)
            or len(start_key) > START_KEY_LENGTH
            or "\x00" in start_key
            or has_lone_surrogate(start_key)
        ):
            raise InvalidInput(
                f"start key must be text of at most {START_KEY_LENGTH} characters, without NUL or lone "
                f"surrogates, got {storable_text(repr(start_key)[:40])}",
                field="start_key" if len(contexts) == 1 else f"start_keys[{position}]",
            )
        chosen = _routed_version(workflow, versions, version, start_key)
        if chosen.pk not in code_by_version:
            code_by_version[chosen.pk] = _code_for(chosen)
        definition = code_by_version[chosen.pk]
        problems = definition.contract.errors(context)
        if problems:
            raise InvalidInput(f"context breaks the contract of {chosen}: " + "; ".join(problems), field=field)
        instances.append(
            WorkflowInstance(
                workflow=workflow,
                version=chosen,
                status=InstanceStatus.PENDING,
                current_step=definition.first_step(),
                context=context,
                revision=1,
                start_key=start_key or "",
                created_at=now,
                updated_at=now,
            )
        )
    return instances


def start_workflow(
    name: str, context: dict[str, Any], *, version: str | None = None, start_key: str = ""
) -> WorkflowInstance:
    """Start one instance on the routed version (current, or ramping for a share of starts)."""
    return start_workflows(name, [context], version=version, start_keys=[start_key])[0]


def _locked_instance(instance_id: Any) -> WorkflowInstance:
    return row_by_id(
        WorkflowInstance.objects.select_for_update().select_related("version", "workflow"), instance_id, "instance"
    )


@retry_on_deadlock()
def signal_workflow(instance_id: int, payload: dict[str, Any], *, actor: Actor = None) -> WorkflowInstance:
    """Resume a waiting instance: merge the payload into its context and go on with the next step."""
    check_context(payload, field="payload")
    with transaction.atomic():
        instance = _locked_instance(instance_id)
        if instance.status != InstanceStatus.WAITING:
            raise Conflict(
                f"instance #{instance.pk} is {instance.status}, not waiting; only waiting instances take signals",
                field="instance",
            )
        definition = _code_for(instance.version)
        context = {**instance.context, **payload}
        problems = definition.contract.errors(context)
        if problems:
            raise InvalidInput(
                f"the signal would break the contract of {instance.version}: " + "; ".join(problems), field="payload"
            )
        next_step = definition.next_step(instance.current_step)
        instance.context = context
        _advance(instance, next_step)
        instance.save()
        if instance.status == InstanceStatus.COMPLETED:
            lifecycle.mark_drained_when_empty(instance.version_id)
        audit.record(
            "instance.signalled",
            actor=actor,
            workflow_id=instance.workflow_id,
            version=instance.version,
            instance=instance,
            message=f"signalled at step {instance.current_step or 'end'}",
            details={"payload_keys": sorted(payload)},
        )
    return instance


def _advance(instance: WorkflowInstance, next_step: str | None) -> None:
    """Move an instance past its current step, in memory; the caller saves inside its transaction."""
    now = timezone.now()
    instance.revision += 1
    instance.attempt = 0
    instance.status_reason = ""
    instance.lease_expires_at = None
    instance.updated_at = now
    if next_step is None:
        instance.status = InstanceStatus.COMPLETED
        instance.current_step = ""
        instance.finished_at = now
    else:
        instance.status = InstanceStatus.PENDING
        instance.current_step = next_step
        enqueue_step(instance.pk, instance.revision)


@retry_on_deadlock()
def finish_instance(
    instance_id: int, status: str, *, reason: str, actor: Actor = None, action: str
) -> WorkflowInstance:
    """End an in-flight instance as cancelled, completed (forced) or expired, keeping the reason."""
    with transaction.atomic():
        instance = _locked_instance(instance_id)
        if instance.status not in IN_FLIGHT_STATUSES:
            raise Conflict(f"instance #{instance.pk} is already {instance.status}", field="instance")
        previous = instance.status
        now = timezone.now()
        instance.status = status
        instance.status_reason = reason
        instance.revision += 1
        instance.lease_expires_at = None
        instance.finished_at = now
        instance.updated_at = now
        instance.save()
        lifecycle.mark_drained_when_empty(
            instance.version_id,
            why=f"its last in-flight instance, #{instance.pk}, is {status}",
            actor=actor if actor is not None else "system:runtime",
        )
        audit.record(
            action,
            actor=actor,
            workflow_id=instance.workflow_id,
            version=instance.version,
            instance=instance,
            message=reason,
            details={"from_status": previous, "to_status": status},
        )
    return instance


def cancel_instance(
    instance_id: int, *, actor: Actor = None, reason: str = "cancelled by an operator"
) -> WorkflowInstance:
    return finish_instance(
        instance_id, InstanceStatus.CANCELLED, reason=reason, actor=actor, action="instance.cancelled"
    )


def force_complete(
    instance_id: int, *, actor: Actor = None, reason: str = "force-completed by an operator"
) -> WorkflowInstance:
    return finish_instance(
        instance_id, InstanceStatus.COMPLETED, reason=reason, actor=actor, action="instance.force_completed"
    )
