"""Periodic care of batches: re-sending the chunks of stalled batches, discarding old previews and
expiring the approval requests that went unanswered as long."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ...models import BatchItem, MigrationBatch
from .. import audit
from .commands import stop_batch
from .scheduling import chains, enqueue_chunk

State = MigrationBatch.State


def resume_stalled_batches(*, stalled_for: timedelta | None = None) -> int:
    """Re-send the next chunk of running batches that made no progress for a while (a worker died with it)."""
    if stalled_for is None:
        stalled_for = timedelta(seconds=settings.WORKFLOWS_BATCH_STALL_SECONDS)
    stalled = MigrationBatch.objects.filter(
        state=State.RUNNING, auto_upgrade=False, progressed_at__lt=timezone.now() - stalled_for
    )
    for batch in stalled:
        for _ in range(chains(batch)):
            enqueue_chunk(batch.pk)
    return len(stalled)


def discard_stale_drafts(*, older_than: timedelta | None = None) -> int:
    """Delete previews never confirmed (draft batches and their frozen items) after a while.

    A preview freezes its selection as items, one row per instance: unconfirmed previews of large
    versions would otherwise pile up. The operator who comes back later previews again. A request
    for approval expires with its preview, at the same age (expire_unapproved). Returns how many
    previews were discarded and requests expired.
    """
    if older_than is None:
        older_than = timedelta(hours=settings.WORKFLOWS_DRAFT_HOURS)
    return _discard_drafts(older_than) + expire_unapproved(older_than)


def _discard_drafts(older_than: timedelta) -> int:
    with transaction.atomic():
        # Locked and skipped if a confirmation holds one right now: that draft is being launched.
        stale = list(
            MigrationBatch.objects.select_for_update(skip_locked=True)
            .filter(state=State.DRAFT, created_at__lt=timezone.now() - older_than)
            .values_list("pk", "workflow_id")
        )
        if not stale:
            return 0
        ids = [pk for pk, _ in stale]
        BatchItem.objects.filter(batch_id__in=ids).delete()
        MigrationBatch.objects.filter(pk__in=ids).delete()
        for workflow_id in sorted({workflow_id for _, workflow_id in stale}):
            discarded = sorted(pk for pk, owner in stale if owner == workflow_id)
            audit.record(
                "batch.previews_discarded",
                actor="system:batches",
                workflow_id=workflow_id,
                message=f"discarded {len(discarded)} preview(s) not confirmed within {older_than}",
                details={"batches": discarded},
            )
    return len(stale)


def expire_unapproved(older_than: timedelta) -> int:
    """End the batches still awaiting approval after `older_than` as cancelled, nothing migrated,
    each audited: what was previewed then is no longer what an approver would be shown."""
    with transaction.atomic():
        # Locked and skipped if an approval holds one right now: the approval decides it.
        expired = list(
            MigrationBatch.objects.select_for_update(skip_locked=True)
            .filter(state=State.AWAITING_APPROVAL, created_at__lt=timezone.now() - older_than)
            .order_by("pk")
        )
        for batch in expired:
            skipped, _ = stop_batch(batch, f"its approval request expired unanswered after {older_than}")
            audit.record(
                "batch.approval_expired",
                actor="system:batches",
                workflow_id=batch.workflow_id,
                version_id=batch.source_version_id,
                batch=batch,
                message=f"the {batch.get_kind_display().lower()} of {skipped} instance(s) requested by "
                f"{batch.requested_by} was not approved within {older_than}; it expired, nothing migrated",
                details={"requested_by": batch.requested_by, "skipped": skipped},
            )
    return len(expired)
