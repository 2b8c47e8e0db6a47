"""When a batch's chunks run: how many chains work on it at once, and sending the next chunk task."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction

from ...models import MigrationBatch
from ..dispatch import publish

# A scheduled batch re-checks its start at least this often, so no task waits on a broker for hours.
MAX_WAIT_SECONDS = 300
# A rate-limited batch's own next chunk may arrive this much before its time (clocks, broker).
RATE_SLACK = timedelta(milliseconds=250)


def runs_serially(batch: MigrationBatch) -> bool:
    """A canary still in progress or a rate limit needs one chunk at a time; so does SQLite (no row locks)."""
    canary_pending = bool(batch.canary_size) and batch.processed < batch.canary_size
    return canary_pending or bool(batch.rate_limit) or connection.vendor != "postgresql"


def chains(batch: MigrationBatch) -> int:
    """How many chunk tasks work on the batch at once (each sends its successor)."""
    return 1 if runs_serially(batch) else max(1, settings.WORKFLOWS_BATCH_PARALLEL_CHUNKS)


def enqueue_chunk(batch_id: int, countdown: float = 0, after: int = 0) -> None:
    """Send a chunk task; `after` is where a live selection's chain got to (0: from the start)."""
    from ...tasks import process_batch_chunk

    options = {"countdown": min(countdown, MAX_WAIT_SECONDS)} if countdown > 0 else {}
    transaction.on_commit(lambda: publish(process_batch_chunk, (batch_id, after), **options))
