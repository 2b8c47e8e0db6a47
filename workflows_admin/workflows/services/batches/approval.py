"""Four eyes: a batch over more than WORKFLOWS_APPROVAL_THRESHOLD instances waits, awaiting
approval, until a second user with approve_migrations approves it (it then starts, or queues behind
the batch over its source version) or rejects it; unapproved, it expires with its preview
(WORKFLOWS_DRAFT_HOURS, housekeeping.expire_unapproved). commands.begin asks for the approval;
rules.can_approve and can_reject decide who may answer. Every step is audited.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import transaction

from ...models import MigrationBatch
from ...rules import can_approve, can_reject
from .. import audit
from ..audit import Actor
from ..reasons import parse_reason
from ..retries import retry_on_deadlock
from .commands import launch_action, locked_batch, stop_batch
from .queueing import start_or_queue


@retry_on_deadlock()
def approve_batch(batch_id: Any, *, approver: User, actor: Actor = None) -> MigrationBatch:
    """`approver` is the user whose permission and identity count; `actor` names them in the audit
    log when it is not the user themselves (`cli:<user>` from the command line)."""
    actor = actor or approver
    with transaction.atomic():
        batch = locked_batch(batch_id)
        can_approve(batch, approver).require(field="batch")
        what = f"{batch.get_kind_display().lower()} of {batch.total} instance(s)"
        audit.record(
            "batch.approved",
            actor=actor,
            workflow=batch.workflow,
            version=batch.source_version,
            batch=batch,
            message=f"{approver.get_username()} approved the {what} requested by {batch.requested_by}",
            details={"requested_by": batch.requested_by, "approved_by": approver.get_username(), "total": batch.total},
        )
        return start_or_queue(batch, actor, launch_action(batch), f"{what}, approved by {approver.get_username()}")


@retry_on_deadlock()
def reject_batch(batch_id: Any, *, approver: User, reason: Any, actor: Actor = None) -> MigrationBatch:
    """Refuse a request: the batch ends cancelled, nothing migrated, with the reason on its items
    and in the audit log for the requester."""
    reason = _reason(reason)
    actor = actor or approver
    with transaction.atomic():
        batch = locked_batch(batch_id)
        can_reject(batch, approver).require(field="batch")
        skipped, _ = stop_batch(batch, f"rejected by {approver.get_username()}: {reason}")
        audit.record(
            "batch.rejected",
            actor=actor,
            workflow=batch.workflow,
            version=batch.source_version,
            batch=batch,
            message=f"{approver.get_username()} rejected the {batch.get_kind_display().lower()} of {skipped} "
            f"instance(s) requested by {batch.requested_by}: {reason}",
            details={"requested_by": batch.requested_by, "rejected_by": approver.get_username(), "reason": reason},
        )
    return batch


def _reason(text: Any) -> str:
    return parse_reason(text, field="reason", needed="a rejection needs a reason, for the requester to read")
