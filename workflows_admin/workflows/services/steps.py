"""Running one step of one instance, safely under at-least-once delivery.

A step runs in three parts:
1. claim (one conditional UPDATE, a revision check): the instance must be pending at the revision the
   task was sent for; it becomes `running`, its revision is bumped and a lease is set. A duplicate
   delivery finds the revision moved on and does nothing.
2. the handler runs outside any transaction (steps may take minutes); a heartbeat renews the lease.
3. record (one short transaction): the result and its step run are written only if the instance is
   still at the claim's revision. If a migration, rollback, cancel or cleanup changed the instance
   meanwhile, the result is discarded: an old version's result is never written over newer state.

The common path costs two statements to claim and two to record (no SELECT ... FOR UPDATE round
trips); the step run row is written with the result, so a running step shows on the instance itself.

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
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from psycopg.types.json import Jsonb

from workflows_admin.engine import StepContext, VersionDef, Wait, WorkflowDef
from workflows_admin.engine.contracts import check_json_object, storable_text

from ..models import TERMINAL_STATUSES, InstanceStatus, Patch, StepRun, WorkflowInstance, WorkflowVersion
from ..runtime import get_registry
from . import audit, lifecycle
from .batches.safe_points import record_at_safe_point, settle_at_rest
from .dispatch import enqueue_step, enqueue_steps
from .upgrade_boundaries import upgrade_with_result

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
    version_id: int
    started_at: Any
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
    """Run the current step of an instance sent at `revision`. Returns what happened, for logs and tests.

    Steps that finish quickly are chained: the next step is claimed in the same write that records the
    previous one and runs in this task, without a broker round trip, until the chain budget
    (WORKFLOWS_STEP_CHAIN_SECONDS) is spent. Each step is still claimed and recorded on its own.
    """
    claim = _claim(instance_id, revision)
    if isinstance(claim, str):
        return claim
    deadline = time.monotonic() + settings.WORKFLOWS_STEP_CHAIN_SECONDS
    while True:
        outcome = _execute(claim)
        result, next_claim = _write_result(claim, outcome, chain=time.monotonic() < deadline)
        if next_claim is None:
            return result
        claim = next_claim


# version id -> (workflow name, version label): both are immutable once a version row exists.
_version_names: dict[int, tuple[str, str]] = {}


def _names_of(version_id: int) -> tuple[str, str]:
    if version_id not in _version_names:
        version = WorkflowVersion.objects.select_related("workflow").get(pk=version_id)
        _version_names[version_id] = (version.workflow.name, version.version)
    return _version_names[version_id]


def _claim(instance_id: int, revision: int) -> Claim | str:
    """Take the step: one conditional UPDATE (a revision check), with RETURNING on PostgreSQL and a read elsewhere."""
    now = timezone.now()
    if connection.vendor == "postgresql":
        # UPDATE ... RETURNING: the claim and the row it claimed in one round trip.
        returned = WorkflowInstance.objects.raw(
            f"UPDATE {WorkflowInstance._meta.db_table} SET status = %s, revision = %s, lease_expires_at = %s, "
            "updated_at = %s WHERE id = %s AND status = %s AND revision = %s RETURNING *",
            [InstanceStatus.RUNNING, revision + 1, now + _lease(), now, instance_id, InstanceStatus.PENDING, revision],
        )
        instance = next(iter(returned), None)
        return _claim_for(instance, now) if instance else _claim_contended(instance_id, revision, now)
    claimed = WorkflowInstance.objects.filter(pk=instance_id, status=InstanceStatus.PENDING, revision=revision).update(
        status=InstanceStatus.RUNNING, revision=revision + 1, lease_expires_at=now + _lease(), updated_at=now
    )
    if not claimed:
        return _claim_contended(instance_id, revision, now)
    instance = WorkflowInstance.objects.filter(pk=instance_id, revision=revision + 1).first()
    if instance is None:
        return "stale"  # changed (e.g. migrated) right after our claim; its new revision has its own task
    return _claim_for(instance, now)


def _claim_contended(instance_id: int, revision: int, now: datetime) -> Claim | str:
    """Not pending at our revision: gone, stale, leased by a live worker, or left behind by a dead one."""
    with transaction.atomic():
        instance = WorkflowInstance.objects.select_for_update().filter(pk=instance_id).first()
        if instance is None:
            return "gone"
        if instance.status != InstanceStatus.RUNNING or instance.revision not in (revision, revision + 1):
            return "stale"
        # Our own claim redelivered (revision + 1), or a takeover sent by recovery (revision).
        if instance.lease_expires_at and instance.lease_expires_at > now:
            raise ClaimBusy((instance.lease_expires_at - now).total_seconds() + 1)
        StepRun.objects.create(
            instance=instance,
            version_id=instance.version_id,
            step=instance.current_step,
            attempt=instance.attempt + 1,
            claim_revision=instance.revision,
            outcome=StepRun.Outcome.ABANDONED,
            error="the worker running this step stopped renewing its lease; the step was taken over",
            started_at=instance.updated_at,
            finished_at=now,
        )
        if instance.move_pending:
            # A move waited for this step: it applies now, on the pending state, instead of a takeover.
            instance.revision += 1
            instance.status, instance.lease_expires_at, instance.updated_at = InstanceStatus.PENDING, None, now
            instance.save(update_fields=["revision", "status", "lease_expires_at", "updated_at"])
            settle_at_rest(instance.pk)
            return "moved at its safe point"
        instance.revision += 1
        instance.lease_expires_at = now + _lease()
        instance.updated_at = now
        instance.save(update_fields=["revision", "lease_expires_at", "updated_at"])
    return _claim_for(instance, now)


def _claim_for(instance: WorkflowInstance, now: datetime) -> Claim | str:
    workflow_name, version_label = _names_of(instance.version_id)
    definition = get_registry().find_version(workflow_name, version_label)
    if definition is None or instance.current_step not in definition.step_names:
        return _park(instance, now)
    step = definition.get_step(instance.current_step)
    workflow_def = definition.workflow
    return Claim(
        instance_id=instance.pk,
        revision=instance.revision,
        version_id=instance.version_id,
        started_at=now,
        step=step.name,
        attempt=instance.attempt + 1,
        context=instance.context,
        created_at=instance.created_at,
        patches=dict(instance.patches),
        patch_introduced=_patch_times(instance, workflow_def),
        workflow=workflow_name,
        version_label=version_label,
        definition=definition,
        max_retries=step.max_retries if step.max_retries is not None else workflow_def.max_retries,
        retry_backoff=workflow_def.retry_backoff,
    )


def _park(instance: WorkflowInstance, now: datetime) -> str:
    """No code for this version (or step) here: park the claimed instance with the reason, flag the version."""
    workflow_name, version_label = _names_of(instance.version_id)
    reason = (
        f"worker {WORKER_NAME} has no code for {workflow_name} {version_label} step '{instance.current_step}'; "
        f"deploy the code or migrate the instance to a version that has it"
    )
    with transaction.atomic():
        parked = WorkflowInstance.objects.filter(
            pk=instance.pk, revision=instance.revision, status=InstanceStatus.RUNNING
        ).update(
            status=InstanceStatus.PARKED,
            status_reason=reason,
            revision=instance.revision + 1,
            lease_expires_at=None,
            updated_at=now,
        )
        if not parked:
            return "stale"
        if WorkflowInstance.objects.filter(pk=instance.pk, move_pending=True).exists():
            settle_at_rest(instance.pk)  # parked, at rest: a move that waited applies now
        StepRun.objects.create(
            instance=instance,
            version_id=instance.version_id,
            step=instance.current_step,
            attempt=instance.attempt + 1,
            claim_revision=instance.revision,
            worker=WORKER_NAME,
            started_at=now,
            finished_at=now,
            outcome=StepRun.Outcome.PARKED,
            error=reason,
        )
        flagged = WorkflowVersion.objects.filter(pk=instance.version_id, code_missing_since__isnull=True).update(
            code_missing_since=now, code_missing_reason=reason
        )
        if flagged:  # the first instance parked since the code was last seen: one event, not one per instance
            audit.record(
                "version.code_missing",
                actor="system:runtime",
                workflow_id=instance.workflow_id,
                version_id=instance.version_id,
                instance_id=instance.pk,
                message=f"instances of {workflow_name} {version_label} are parked: {reason}",
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


class _LeaseKeeper:
    """One thread per worker process renews the leases of the steps the process is running.

    A thread per step cost a tenth of a short step's time (py-spy). The keeper starts on first use
    in each process (prefork children do not inherit threads); it renews a step's lease every third
    of the lease, so only steps that run that long ever cost a query.
    """

    TICK = 0.25

    def __init__(self) -> None:
        self._running: dict[int, tuple[int, float]] = {}  # instance id -> (claim revision, last renewed)
        self._lock = threading.Lock()
        self._pid = 0

    @contextmanager
    def holding(self, claim: Claim) -> Iterator[None]:
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, daemon=True, name="lease-keeper").start()
            self._running[claim.instance_id] = (claim.revision, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                self._running.pop(claim.instance_id, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK)
            every = max(settings.WORKFLOWS_STEP_LEASE_SECONDS / 3, self.TICK)
            now = time.monotonic()
            with self._lock:
                due = [(i, revision) for i, (revision, renewed) in self._running.items() if now - renewed >= every]
                for instance_id, revision in due:
                    self._running[instance_id] = (revision, now)
            if due:
                self._renew(due)

    def _renew(self, due: list[tuple[int, int]]) -> None:
        try:
            for instance_id, revision in due:
                WorkflowInstance.objects.filter(
                    pk=instance_id, revision=revision, status=InstanceStatus.RUNNING
                ).update(lease_expires_at=timezone.now() + _lease())
        except Exception:  # a dropped connection: the next round tries again; the lease has slack
            logger.warning("could not renew step leases %s", due, exc_info=True)
        finally:
            connection.close()  # renewals are rare; no idle connection held by every worker process


_leases = _LeaseKeeper()


def _patch_times(instance: WorkflowInstance, workflow_def: WorkflowDef) -> dict[str, Any]:
    """Read when each patch reached the database now, so handlers (sync or async) never query."""
    if not workflow_def.patches:
        return {}
    return dict(Patch.objects.filter(workflow_id=instance.workflow_id).values_list("name", "introduced_at"))


def _patch_decider(claim: Claim) -> Callable[[str], bool]:
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
        known_patches=claim.definition.patches,
    )
    try:
        with _leases.holding(claim):
            result = step.handler(ctx)
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
    except Exception as exc:  # the author's code: any error is this step's failure
        logger.info("step %s of instance %s failed: %s", claim.step, claim.instance_id, exc)
        return Outcome(
            # Kept in text columns: an exception quoting a NUL or a lone surrogate must not fail the write.
            error=storable_text(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"),
            patch_decisions=ctx.patch_decisions,
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


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _record(claim: Claim, outcome: Outcome) -> str:
    """Write the result with a revision check: if anything changed the instance meanwhile, discard it."""
    return _write_result(claim, outcome, chain=False)[0]


def _write_result(claim: Claim, outcome: Outcome, *, chain: bool) -> tuple[str, Claim | None]:
    """Record a step's outcome; with `chain`, claim the next step in the same write and return its claim."""
    now = timezone.now()
    changes: dict[str, Any] = {"revision": claim.revision + 1, "lease_expires_at": None, "updated_at": now}
    if outcome.patch_decisions:
        changes["patches"] = {**claim.patches, **outcome.patch_decisions}
    retry_in = None
    if outcome.error:
        first_line = outcome.error.splitlines()[0]
        changes["attempt"] = claim.attempt
        if outcome.retryable and claim.attempt <= claim.max_retries:
            result, step_outcome = "retrying", StepRun.Outcome.RETRYING
            changes.update(
                status=InstanceStatus.PENDING, status_reason=f"retrying after attempt {claim.attempt}: {first_line}"
            )
            retry_in = claim.retry_backoff * 2 ** (claim.attempt - 1)
        else:
            result, step_outcome = "failed", StepRun.Outcome.FAILED
            changes.update(status=InstanceStatus.FAILED, status_reason=first_line, finished_at=now)
    else:
        changes.update(context=outcome.context, attempt=0, status_reason="")
        next_step = claim.definition.next_step(claim.step)
        if outcome.wait is not None:
            result, step_outcome = "waiting", StepRun.Outcome.WAITING
            changes.update(status=InstanceStatus.WAITING, status_reason=outcome.wait.reason)
        elif next_step is None:
            result, step_outcome = "completed", StepRun.Outcome.SUCCEEDED
            changes.update(status=InstanceStatus.COMPLETED, current_step="", finished_at=now)
        else:
            result, step_outcome = "advanced", StepRun.Outcome.SUCCEEDED
            changes.update(status=InstanceStatus.PENDING, current_step=next_step)
            if chain:
                changes.update(status=InstanceStatus.RUNNING, lease_expires_at=now + _lease())
    step_run = StepRun(
        instance_id=claim.instance_id,
        version_id=claim.version_id,
        step=claim.step,
        step_version=claim.definition.get_step(claim.step).step_version,
        attempt=claim.attempt,
        claim_revision=claim.revision,
        worker=WORKER_NAME,
        started_at=claim.started_at,
        finished_at=now,
        outcome=step_outcome,
        error=outcome.error,
    )
    upgraded = upgrade_with_result(claim, changes, step_run, now=now) if ONE_STATEMENT_RESULTS else None
    if upgraded is None:
        written, version_draining = _store_result(claim, changes, step_run)
        if written is None:  # a move waited for this step: applied with its result, at this safe point
            return f"{result}; moved at its safe point", None
        if not written:
            return "discarded", None
        status, revision = changes["status"], claim.revision + 1
    else:  # written with its version's auto-upgrade (or the upgrade's failure), in one statement
        if upgraded.moved:
            result, retry_in = f"{result}; auto-upgraded to {upgraded.version_label}", None
        status, revision, version_draining = upgraded.status, upgraded.revision, False
    if status == InstanceStatus.PENDING:
        enqueue_step(claim.instance_id, revision, countdown=retry_in)
    elif status in TERMINAL_STATUSES and version_draining is not False:
        lifecycle.mark_drained_when_empty(claim.version_id)
    if status != InstanceStatus.RUNNING:
        return result, None
    if upgraded is not None and upgraded.moved:
        definition = get_registry().find_version(claim.workflow, upgraded.version_label)
        assert definition is not None  # the upgrade chains only onto a step of code it has
        claim = replace(
            claim, version_id=upgraded.version_id, version_label=upgraded.version_label, definition=definition
        )
    step = claim.definition.get_step(upgraded.step if upgraded else changes["current_step"])
    return result, replace(
        claim,
        revision=revision,
        started_at=now,
        step=step.name,
        attempt=1,
        context=upgraded.context if upgraded else changes["context"],
        patches=changes.get("patches", claim.patches),
        max_retries=step.max_retries if step.max_retries is not None else claim.definition.workflow.max_retries,
    )


def _discarded_reason(claim: Claim, error: str) -> str:
    reason = f"the instance changed while the step ran (claim revision {claim.revision}); result discarded"
    return f"{reason}\n{error}" if error else reason


# On PostgreSQL the result and its step run are written by one statement (a data-modifying CTE):
# one round trip instead of four (BEGIN, UPDATE, INSERT, COMMIT), the same all-or-nothing effect.
ONE_STATEMENT_RESULTS = True
_JSON_FIELDS = {"context", "patches"}


def _store_result(claim: Claim, changes: dict[str, Any], step_run: StepRun) -> tuple[bool | None, bool | None]:
    """Write `changes` if the instance is still at the claim's revision and no move waits for it,
    and the step run either way (as discarded when the revision moved). Returns whether the result
    was written (None: written at a safe point, with the move that waited), and whether the version
    is draining (None: not known, ask)."""
    if ONE_STATEMENT_RESULTS and connection.vendor == "postgresql":
        written, draining = _store_result_in_one_statement(claim, changes, step_run)
    else:
        with transaction.atomic():
            written = bool(
                WorkflowInstance.objects.filter(
                    pk=claim.instance_id,
                    revision=claim.revision,
                    status=InstanceStatus.RUNNING,
                    move_pending=False,
                    version__upgrade_to__isnull=True,
                ).update(**changes)
            )
            if written:
                step_run.save()
        draining = None
    if written:
        return True, draining
    # Refused: a move waits for this step (a safe point), or the instance changed since the claim.
    if record_at_safe_point(claim.instance_id, claim.revision, changes, step_run):
        return None, None
    step_run.outcome = StepRun.Outcome.DISCARDED
    step_run.error = _discarded_reason(claim, step_run.error)
    step_run.save()
    return False, None


def _store_result_in_one_statement(claim: Claim, changes: dict[str, Any], step_run: StepRun) -> tuple[bool, bool]:
    """The result and its step run in one statement, only while the instance is at the claim's
    revision and no move waits for the step; (False, False) and nothing written otherwise."""
    assignments = ", ".join(f"{column} = %s" for column in changes)
    values = [Jsonb(value) if column in _JSON_FIELDS else value for column, value in changes.items()]
    # An auto-upgrade version with a target: the boundary moves the instance (a safe point), unless
    # the step completed it (nothing left to move).
    upgrading = (
        ""
        if changes["status"] == InstanceStatus.COMPLETED
        else f"""AND NOT EXISTS (
            SELECT 1 FROM {WorkflowVersion._meta.db_table} upgrading
            WHERE upgrading.id = version_id AND upgrading.upgrade_to_id IS NOT NULL
        )"""
    )
    sql = f"""
        WITH updated AS (
            UPDATE {WorkflowInstance._meta.db_table} SET {assignments}
            WHERE id = %s AND revision = %s AND status = %s AND NOT move_pending {upgrading}
            RETURNING id
        )
        INSERT INTO {StepRun._meta.db_table} ({", ".join(StepRun.INSERTED)})
        SELECT {", ".join(["%s"] * len(StepRun.INSERTED))}
        WHERE EXISTS (SELECT 1 FROM updated)
        RETURNING
            -- Whether the version is draining, so a finished instance asks about draining only then.
            (SELECT state = %s FROM {WorkflowVersion._meta.db_table} WHERE id = %s)
    """
    params: list[Any] = [
        *values,
        claim.instance_id,
        claim.revision,
        InstanceStatus.RUNNING,
        *step_run.inserted_values(),
        WorkflowVersion.State.DRAINING,
        claim.version_id,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
        return (True, bool(row[0])) if row else (False, False)


def recover_stalled_steps(*, pending_grace: timedelta | None = None, limit: int = 1000) -> int:
    """Re-send work that was lost: expired leases (dead workers) and pending instances nobody picked up
    within the grace period (a message lost with a broker that keeps nothing on disk).

    Sending is always safe: a step task for a revision that moved on does nothing.
    """
    if pending_grace is None:
        pending_grace = timedelta(seconds=settings.WORKFLOWS_PENDING_GRACE_SECONDS)
    now = timezone.now()
    expired = WorkflowInstance.objects.filter(status=InstanceStatus.RUNNING, lease_expires_at__lt=now)
    forgotten = WorkflowInstance.objects.filter(status=InstanceStatus.PENDING, updated_at__lt=now - pending_grace)
    claims = [
        pair
        for queryset in (expired, forgotten)
        for pair in queryset.order_by("pk").values_list("pk", "revision")[:limit]
    ]
    enqueue_steps(claims)
    return len(claims)
