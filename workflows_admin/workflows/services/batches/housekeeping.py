"""Periodic care of batches: replacing the chains of chunk tasks whose lease ran out, discarding old previews and
expiring the approval requests that went unanswered as long."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ...models import BatchChain, BatchItem, MigrationBatch
from .. import audit
from .commands import stop_batch
from .scheduling import enqueue_chunk, lease, start_chains

State = MigrationBatch.State


def resume_stalled_batches(*, now: datetime | None = None) -> int:
    """Replace the chains of running batches whose lease ran out (a worker died with a chunk, or a
    broker lost the next task): each is retired and a new chain sent in its place. Returns how many.

    A chain in a chunk's transaction keeps its row locked and is skipped; so are auto-upgrade
    batches (moved at step boundaries, no chains) and batches that legitimately wait: paced by a
    rate limit or waiting for running steps (next_chunk_at ahead), or scheduled (not_before ahead),
    whose chain's lease already runs until then. A running batch left with no chain at all (its
    task was queued by a version before chains) gets its chains once it made no progress for a lease.
    """
    now = now or timezone.now()
    waiting = Q(next_chunk_at__gt=now) | Q(not_before__gt=now)
    with transaction.atomic():
        expired = list(
            BatchChain.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(lease_expires_at__lt=now, batch__state=State.RUNNING, batch__auto_upgrade=False)
            .exclude(Q(batch__next_chunk_at__gt=now) | Q(batch__not_before__gt=now))
            .values_list("pk", "batch_id")
        )
        BatchChain.objects.filter(pk__in=[pk for pk, _ in expired]).delete()
        for _, batch_id in expired:
            enqueue_chunk(batch_id)
        orphans = list(
            MigrationBatch.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(state=State.RUNNING, auto_upgrade=False, chains__isnull=True)
            .filter(Q(progressed_at__isnull=True) | Q(progressed_at__lt=now - lease()))
            .exclude(waiting)
        )
        for batch in orphans:
            start_chains(batch)
    # Chains of batches that stopped running meanwhile (a worker died as its batch was paused).
    BatchChain.objects.filter(lease_expires_at__lt=now).exclude(batch__state=State.RUNNING).delete()
    return len(expired) + len(orphans)


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
