"""A batch as every surface shows it: the API, the webhooks' payloads and the CLI's --json.

One dict under the API's names (docs/openapi.json); the webhook payload and the CLI, published
first with names of their own, pick and rename from it (webhooks/outbox.py, cli/batch_output.py).
"""

from __future__ import annotations

from typing import Any

from .models import MigrationBatch
from .selectors import batch_progress


def batch_summary(batch: MigrationBatch) -> dict[str, Any]:
    """The batch's facts from its row and its two versions (no other query): what, where, how far."""
    progress = batch_progress(batch)
    return {
        "id": batch.pk,
        "kind": batch.kind,
        "state": batch.state,
        "source_version": batch.source_version.version if batch.source_version else None,
        "target_version": batch.target_version.version if batch.target_version else None,
        "parent_id": batch.parent_id,
        "total": batch.total,
        "succeeded": batch.succeeded,
        "failed": batch.failed,
        "skipped": batch.skipped,
        "conflicts": batch.conflicts,
        "deferred": batch.deferred,  # waiting for their running steps: they move when the steps end
        "processed": progress["processed"],
        "percent": progress["percent"],
        "finished": progress["finished"],
        "rate_per_second": progress["rate_per_second"],
        "eta_seconds": progress["eta_seconds"],
        "scheduled_for": progress["scheduled_for"],
        "force": batch.force,
        "requested_by": batch.requested_by or None,  # who asked for its approval (four eyes)
        "created_at": batch.created_at,
        "started_at": batch.started_at,
        "finished_at": batch.finished_at,
    }
