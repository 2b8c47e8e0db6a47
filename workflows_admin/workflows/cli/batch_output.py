"""What the batch subcommands (migrate, rollback, retry, batches) share: waiting and the JSON shape."""

import time

from ..models import MigrationBatch
from ..selectors import batch_progress


def batch_result(batch: MigrationBatch) -> dict:
    progress = batch_progress(batch)
    return {
        "batch_id": batch.pk,
        "kind": batch.kind,
        "state": batch.state,
        "source": batch.source_version.version if batch.source_version else None,
        "target": batch.target_version.version if batch.target_version else None,
        "total": batch.total,
        "migrated": batch.succeeded,
        "failed": batch.failed,
        "skipped": batch.skipped,
        "conflicts": batch.conflicts,
        "percent": progress["percent"],
    }


def wait_for(batch: MigrationBatch, out, poll_seconds: float = 0.5) -> MigrationBatch:
    """Poll until the batch is finished (a worker processes it), printing progress as it moves."""
    last = None
    while True:
        batch.refresh_from_db()
        progress = batch_progress(batch)
        if progress["processed"] != last:
            out(f"  {progress['processed']}/{batch.total} ({progress['percent']}%) {batch.state}")
            last = progress["processed"]
        if batch.is_finished or batch.state == MigrationBatch.State.PAUSED:
            return batch
        time.sleep(poll_seconds)
