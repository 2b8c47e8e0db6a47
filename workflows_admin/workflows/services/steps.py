"""Running one step of one instance, safely under at-least-once delivery.

A step runs in three parts:
1. claim (short transaction, row lock): the instance must be at the revision the task was sent for;
   it becomes `running`, its revision is bumped and a lease is set. A duplicate delivery finds the
   revision moved on and does nothing.
2. the handler runs outside any transaction (steps may take minutes); a heartbeat renews the lease.
3. record (short transaction, row lock): the result is written only if the revision is still the
   claim's. If a migration, rollback, cancel or cleanup changed the instance meanwhile, the result is
   discarded: an old version's result is never written over newer state.

A worker that dies mid-step leaves an expired lease; the redelivered task, or the periodic
`recover_stalled_steps`, takes the claim over.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import logging
import os
import socket
import threading
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from workflows_admin.engine import StepContext, VersionDef, Wait
from workflows_admin.engine.contracts import check_json_object

from ..models import TERMINAL_STATUSES, InstanceStatus, Patch, StepRun, WorkflowInstance, WorkflowVersion
from ..runtime import get_registry
from . import lifecycle
from .dispatch import enqueue_step

logger = logging.getLogger(__name__)
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"


class ClaimBusy(Exception):
    """Another worker holds a live lease on this step; try again after `retry_in` seconds."""

    def __init__(self, retry_in: float):
        self.retry_in = retry_in
        super().__init__(f"step is leased by another worker for {retry_in:.0f}s more")


@dataclass
class Claim:
    instance_id: int
    revision: int  # the revision the claim created; the result is written only at this revision
    step_run_id: int
    step: str
    attempt: int
    context: dict[str, Any]
    created_at: Any
    patches: dict[str, bool]
    patch_introduced: dict[str, Any]
    workflow: str
    version_label: str
    definition: VersionDef
    max_retries: int
    retry_backoff: float


def _lease() -> timedelta:
    return timedelta(seconds=settings.WORKFLOWS_STEP_LEASE_SECONDS)


def run_step(instance_id: int, revision: int) -> str:
    """Run the current step of an instance sent at `revision`. Returns what happened, for logs and tests."""
    claim = _claim(instance_id, revision)
    if isinstance(claim, str):
        return claim
    outcome = _execute(claim)
    return _record(claim, outcome)


def _claim(instance_id: int, revision: int) -> Claim | str:
    now = timezone.now()
    with transaction.atomic():
        instance = (
            WorkflowInstance.objects.select_for_update()
            .select_related("version", "workflow")
            .filter(pk=instance_id)
            .first()
        )
        if instance is None:
            return "gone"
        taking_over = False
        if instance.status == InstanceStatus.PENDING and instance.revision == revision:
            pass
        elif instance.status == InstanceStatus.RUNNING and instance.revision in (revision, revision + 1):
            # Our own claim redelivered (revision + 1) or a takeover sent by recovery (revision).
            if instance.lease_expires_at and instance.lease_expires_at > now:
                raise ClaimBusy((instance.lease_expires_at - now).total_seconds() + 1)
            taking_over = True
        else:
            return "stale"

        version = instance.version
        definition = get_registry().find_version(instance.workflow.name, version.version)
        if definition is None or instance.current_step not in definition.step_names:
            return _park(instance, version, now)
        if taking_over:
            StepRun.objects.filter(
                instance=instance, claim_revision=instance.revision, outcome=StepRun.Outcome.RUNNING
            ).update(outcome=StepRun.Outcome.ABANDONED, finished_at=now, error="worker lost its lease")
        step = definition.get_step(instance.current_step)
        instance.status = InstanceStatus.RUNNING
        instance.revision += 1
        instance.lease_expires_at = now + _lease()
        instance.updated_at = now
        instance.save(update_fields=["status", "revision", "lease_expires_at", "updated_at"])
        step_run = StepRun.objects.create(
            instance=instance,
            version=version,
            step=step.name,
            step_version=step.step_version,
            attempt=instance.attempt + 1,
            claim_revision=instance.revision,
            worker=WORKER_NAME,
            started_at=now,
        )
        workflow_def = definition.workflow
        return Claim(
            instance_id=instance.pk,
            revision=instance.revision,
            step_run_id=step_run.pk,
            step=step.name,
            attempt=instance.attempt + 1,
            context=instance.context,
            created_at=instance.created_at,
            patches=dict(instance.patches),
            patch_introduced=_patch_times(instance, workflow_def),
            workflow=instance.workflow.name,
            version_label=version.version,
            definition=definition,
            max_retries=step.max_retries if step.max_retries is not None else workflow_def.max_retries,
            retry_backoff=workflow_def.retry_backoff,
        )


def _park(instance: WorkflowInstance, version: WorkflowVersion, now) -> str:
    """No code for this version (or step) here: park the instance with the reason, flag the version."""
    reason = (
        f"worker {WORKER_NAME} has no code for {version} step '{instance.current_step}'; "
        f"deploy the code or migrate the instance to a version that has it"
    )
    instance.status = InstanceStatus.PARKED
    instance.status_reason = reason
    instance.revision += 1
    instance.lease_expires_at = None
    instance.updated_at = now
    instance.save(update_fields=["status", "status_reason", "revision", "lease_expires_at", "updated_at"])
    StepRun.objects.create(
        instance=instance,
        version=version,
        step=instance.current_step,
        attempt=instance.attempt + 1,
        claim_revision=instance.revision,
        worker=WORKER_NAME,
        started_at=now,
        finished_at=now,
        outcome=StepRun.Outcome.PARKED,
        error=reason,
    )
    WorkflowVersion.objects.filter(pk=version.pk, code_missing_since__isnull=True).update(
        code_missing_since=now, code_missing_reason=reason
    )
    logger.warning("parked instance %s: %s", instance.pk, reason)
    return "parked"


@dataclass
class Outcome:
    context: dict[str, Any] | None = None
    wait: Wait | None = None
    error: str = ""
    retryable: bool = True
    patch_decisions: dict[str, bool] | None = None


class _Heartbeat:
    """Renews the claim's lease while a long handler runs; opens a database connection only if it has to."""

    def __init__(self, claim: Claim):
        self.claim = claim
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"lease-{claim.instance_id}")

    def _run(self):
        interval = max(settings.WORKFLOWS_STEP_LEASE_SECONDS / 3, 0.5)
        try:
            while not self.stop.wait(interval):
                WorkflowInstance.objects.filter(
                    pk=self.claim.instance_id, revision=self.claim.revision, status=InstanceStatus.RUNNING
                ).update(lease_expires_at=timezone.now() + _lease())
        finally:
            connection.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _patch_times(instance: WorkflowInstance, workflow_def) -> dict[str, Any]:
    """Read when each patch reached the database now, so handlers (sync or async) never query."""
    if not workflow_def.patches:
        return {}
    return dict(Patch.objects.filter(workflow_id=instance.workflow_id).values_list("name", "introduced_at"))


def _patch_decider(claim: Claim):
    def decide(name: str) -> bool:
        if name in claim.patches:
            return claim.patches[name]
        introduced_at = claim.patch_introduced.get(name)
        # Instances started after the patch reached the database take the new branch.
        return introduced_at is None or claim.created_at >= introduced_at

    return decide


def _execute(claim: Claim) -> Outcome:
    step = claim.definition.get_step(claim.step)
    ctx = StepContext(
        copy.deepcopy(claim.context),
        instance_id=claim.instance_id,
        workflow=claim.workflow,
        version=claim.version_label,
        step=claim.step,
        attempt=claim.attempt,
        patch_decider=_patch_decider(claim),
        known_patches=claim.definition.workflow.patches,
    )
    try:
        with _Heartbeat(claim):
            result = step.handler(ctx)
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
    except Exception as exc:  # the author's code: any error is this step's failure
        logger.info("step %s of instance %s failed: %s", claim.step, claim.instance_id, exc)
        return Outcome(
            error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}", patch_decisions=ctx.patch_decisions
        )
    decisions = ctx.patch_decisions
    if isinstance(result, Wait) or result is None or result is ctx:
        context = dict(ctx)
    elif isinstance(result, dict):
        context = dict(result)
    else:
        # A step output that is not a context is kept under the step's name.
        context = {**ctx, claim.step: result}
    try:
        context = json.loads(check_json_object(context, settings.WORKFLOWS_MAX_CONTEXT_BYTES))
    except ValueError as exc:
        return Outcome(
            error=f"step returned a context that cannot be stored: {exc}", retryable=False, patch_decisions=decisions
        )
    problems = claim.definition.contract.errors(context)
    if problems:
        return Outcome(
            error=f"contract violation after step '{claim.step}' of {claim.version_label}: " + "; ".join(problems),
            retryable=False,
            patch_decisions=decisions,
        )
    return Outcome(context=context, wait=result if isinstance(result, Wait) else None, patch_decisions=decisions)


async def _await(awaitable):
    return await awaitable


def _record(claim: Claim, outcome: Outcome) -> str:
    now = timezone.now()
    with transaction.atomic():
        instance = WorkflowInstance.objects.select_for_update().filter(pk=claim.instance_id).first()
        step_run = StepRun.objects.get(pk=claim.step_run_id)
        step_run.finished_at = now
        if instance is None or instance.revision != claim.revision or instance.status != InstanceStatus.RUNNING:
            step_run.outcome = StepRun.Outcome.DISCARDED
            step_run.error = (
                "instance changed while the step ran "
                f"(claim revision {claim.revision}, now {instance.revision if instance else 'deleted'}); "
                "result discarded"
            )
            step_run.save(update_fields=["outcome", "error", "finished_at"])
            return "discarded"
        if outcome.patch_decisions:
            instance.patches = {**instance.patches, **outcome.patch_decisions}
        instance.revision += 1
        instance.lease_expires_at = None
        instance.updated_at = now
        if outcome.error:
            result = _record_failure(instance, claim, outcome, step_run, now)
        else:
            instance.context = outcome.context
            instance.attempt = 0
            instance.status_reason = ""
            if outcome.wait is not None:
                instance.status = InstanceStatus.WAITING
                instance.status_reason = outcome.wait.reason
                step_run.outcome = StepRun.Outcome.WAITING
                result = "waiting"
            else:
                step_run.outcome = StepRun.Outcome.SUCCEEDED
                next_step = claim.definition.next_step(claim.step)
                if next_step is None:
                    instance.status = InstanceStatus.COMPLETED
                    instance.current_step = ""
                    instance.finished_at = now
                    result = "completed"
                else:
                    instance.status = InstanceStatus.PENDING
                    instance.current_step = next_step
                    enqueue_step(instance.pk, instance.revision)
                    result = "advanced"
        instance.save()
        step_run.save(update_fields=["outcome", "error", "finished_at"])
        if instance.status in TERMINAL_STATUSES:
            lifecycle.mark_drained_when_empty(instance.version_id)
        return result


def _record_failure(instance: WorkflowInstance, claim: Claim, outcome: Outcome, step_run: StepRun, now) -> str:
    step_run.error = outcome.error
    instance.attempt = claim.attempt
    if outcome.retryable and claim.attempt <= claim.max_retries:
        instance.status = InstanceStatus.PENDING
        instance.status_reason = f"retrying after attempt {claim.attempt}: {outcome.error.splitlines()[0]}"
        step_run.outcome = StepRun.Outcome.RETRYING
        enqueue_step(instance.pk, instance.revision, countdown=claim.retry_backoff * 2 ** (claim.attempt - 1))
        return "retrying"
    instance.status = InstanceStatus.FAILED
    instance.status_reason = outcome.error.splitlines()[0]
    instance.finished_at = now
    step_run.outcome = StepRun.Outcome.FAILED
    return "failed"


def recover_stalled_steps(*, pending_grace: timedelta = timedelta(minutes=5), limit: int = 1000) -> int:
    """Re-send work that was lost: expired leases (dead workers) and pending instances nobody picked up.

    Sending is always safe: a step task for a revision that moved on does nothing.
    """
    now = timezone.now()
    expired = WorkflowInstance.objects.filter(status=InstanceStatus.RUNNING, lease_expires_at__lt=now)
    forgotten = WorkflowInstance.objects.filter(status=InstanceStatus.PENDING, updated_at__lt=now - pending_grace)
    sent = 0
    for queryset in (expired, forgotten):
        for instance_id, revision in queryset.values_list("pk", "revision")[:limit]:
            enqueue_step(instance_id, revision)
            sent += 1
    return sent
