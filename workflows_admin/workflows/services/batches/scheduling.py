"""When a batch's chunks run: how many chains work on it at once, and sending the next chunk task
of a chain with the lease that covers it until it runs (see BatchChain)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from ...models import BatchChain, MigrationBatch
from ..dispatch import publish

# A scheduled batch re-checks its start at least this often, so no task waits on a broker for hours.
MAX_WAIT_SECONDS = 300
# A rate-limited batch's own next chunk may arrive this much before its time (clocks, broker).
RATE_SLACK = timedelta(milliseconds=250)


def lease() -> timedelta:
    return timedelta(seconds=settings.WORKFLOWS_BATCH_LEASE_SECONDS)


def runs_serially(batch: MigrationBatch) -> bool:
    """A canary still in progress or a rate limit needs one chunk at a time; so does SQLite (no row locks)."""
    canary_pending = bool(batch.canary_size and batch.processed < batch.canary_size)
    return canary_pending or bool(batch.rate_limit) or connection.vendor != "postgresql"


def chains(batch: MigrationBatch) -> int:
    """How many chunk tasks work on the batch at once (each sends its successor)."""
    return 1 if runs_serially(batch) else max(1, settings.WORKFLOWS_BATCH_PARALLEL_CHUNKS)


def enqueue_chunk(batch_id: int, countdown: float = 0, after: int = 0, chain: int | None = None) -> None:
    """Send the next chunk task of `chain` (None: of a new chain); `after` is where a live
    selection's chain got to (0: from the start). The chain's lease runs until the task is due and a
    lease beyond: a task lost with the broker, or held by a worker that died, is replaced soon after.
    A chain the resumer retired meanwhile sends nothing (the one that replaced it carries on)."""
    from ...tasks import process_batch_chunk

    wait = min(countdown, MAX_WAIT_SECONDS) if countdown > 0 else 0
    expires = timezone.now() + timedelta(seconds=wait) + lease()
    if chain is None:
        chain = BatchChain.objects.create(batch_id=batch_id, lease_expires_at=expires).pk
    elif not BatchChain.objects.filter(pk=chain).update(lease_expires_at=expires):
        return
    options = {"countdown": wait} if wait else {}
    transaction.on_commit(lambda: publish(process_batch_chunk, (batch_id, after, chain), **options))


def start_chains(batch: MigrationBatch) -> None:
    """Start the batch's chains afresh (a launch, a resume): any left from before are retired, so a
    task of theirs still queued does nothing and the batch never runs more chains than it may."""
    BatchChain.objects.filter(batch_id=batch.pk).delete()
    for _ in range(chains(batch)):
        enqueue_chunk(batch.pk)


def renew(chain_ids: list[int], *, skip_locked: bool = False) -> int:
    """Extend the leases of running chains (never shortening one held for a delayed successor);
    returns how many still exist (a retired chain is not renewed). The keeper skips rows locked
    meanwhile (a hand-on setting the lease, or the resumer retiring the chain): waiting there,
    while holding another chain's row, could close a cycle with a chunk's transaction."""
    expires = timezone.now() + lease()
    chains = BatchChain.objects.filter(pk__in=chain_ids)
    with transaction.atomic():
        if skip_locked:
            chains = BatchChain.objects.filter(pk__in=chains.select_for_update(skip_locked=True).values("pk"))
        return chains.update(lease_expires_at=Greatest(F("lease_expires_at"), Value(expires)))


def adopt_chain(batch_id: int) -> int | None:
    """A chunk task sent without a chain (by hand, or queued by a version before chains) becomes a
    chain of its own if the running batch has fewer than it may run; None: it does nothing."""
    with transaction.atomic():
        batch = (
            MigrationBatch.objects.select_for_update().filter(pk=batch_id, state=MigrationBatch.State.RUNNING).first()
        )
        if batch is None or BatchChain.objects.filter(batch_id=batch_id).count() >= chains(batch):
            return None
        return BatchChain.objects.create(batch_id=batch_id, lease_expires_at=timezone.now() + lease()).pk


def end_chain(chain: int) -> None:
    """The chain stops (the batch finished, paused or waits on its other chains): nothing to resume."""
    BatchChain.objects.filter(pk=chain).delete()
