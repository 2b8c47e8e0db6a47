"""Migrating running instances between versions, and undoing it, in batches processed by Celery.

A batch's selection is frozen or live. A preview, a retry, a rollback or the cleanup freezes it: one
pending BatchItem per instance, with the revision the instance had then; an instance that changed
since (another version, ended, or out of the selection's statuses or steps; advancing a step is no
change) is skipped as "changed since preview". A batch started without a preview is live: it is
counted and bounded by the newest matching id when created, and each chunk takes the next instances
that still match, with no item written before the instance is processed. The item row keeps the
snapshot (version, step, status, context before), so a rollback restores it byte for byte.

The package, along its seams:
- validation: the selection filter, chunk size and pacing a request may ask for;
- commands: preview, start, rollback, retry, pause, resume, cancel (the batch's state machine);
- approval: four eyes, a second user's approval (or rejection) of a batch over the threshold;
- queueing: one batch at a time per source version, the others queued in order;
- instance_moves: one instance moved or rolled back in the caller's request;
- executor, rows, decisions: the chunk executor (claim, decide, write, schedule) and its locking;
- scheduling, leases: how many chunk chains a batch runs, sending them, and renewing their leases;
- housekeeping: the periodic replacement of chains whose lease ran out, discard of old previews, expiry of requests.
"""

from .approval import approve_batch, reject_batch
from .commands import (
    MigrationPreview,
    cancel_batch,
    pause_batch,
    preview_migration,
    resume_batch,
    retry_failed,
    start_migration,
    start_rollback,
)
from .executor import ChunkOutcome, process_batch, process_chunk
from .housekeeping import discard_stale_drafts, resume_stalled_batches
from .instance_moves import migrate_instance, rollback_instance
from .queueing import queue_place
from .validation import (
    MAX_CHUNK,
    MAX_INT_COLUMN,
    MIGRATABLE_STATUSES,
    PACING_KEYS,
    SELECTION_KEYS,
    Pacing,
    parse_moment,
    parse_selection,
)

__all__ = [
    "MAX_CHUNK",
    "MAX_INT_COLUMN",
    "MIGRATABLE_STATUSES",
    "PACING_KEYS",
    "SELECTION_KEYS",
    "ChunkOutcome",
    "MigrationPreview",
    "Pacing",
    "approve_batch",
    "cancel_batch",
    "discard_stale_drafts",
    "migrate_instance",
    "parse_moment",
    "parse_selection",
    "pause_batch",
    "preview_migration",
    "process_batch",
    "process_chunk",
    "queue_place",
    "reject_batch",
    "resume_batch",
    "resume_stalled_batches",
    "retry_failed",
    "rollback_instance",
    "start_migration",
    "start_rollback",
]
