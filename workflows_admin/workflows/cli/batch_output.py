"""What the batch subcommands (migrate, rollback, retry, batch, batches) share: waiting, outcomes, the JSON shape."""

import time
from dataclasses import dataclass

from ..models import MigrationBatch
from ..presenters import batch_summary
from ..selectors import batch_progress
from ..services.batches import queue_place
from ..services.dispatch import BrokerUnavailable, batch_queue, queue_consumers
from ..services.errors import InvalidInput
from ..services.numbers import parse_whole_number
from ..tasks import process_batch_chunk
from . import exit_codes

State = MigrationBatch.State
MAX_TIMEOUT_SECONDS = 30 * 24 * 3600
# Workers are asked again when a batch has not moved for this long (one may have stopped).
WORKER_RECHECK_SECONDS = 10.0
# How long workers have to answer "which queues do you consume?": a second, then longer before
# concluding there is none (a busy worker, or a polling broker such as the demo's filesystem one).
WORKER_REPLY_SECONDS = (1.0, 3.0)
# How a batch that --wait saw to its end (finished or paused) exits.
OUTCOMES = {
    State.COMPLETED: exit_codes.OK,
    State.COMPLETED_WITH_FAILURES: exit_codes.FAILURES,
    State.PAUSED: exit_codes.PAUSED,
    State.CANCELLED: exit_codes.CANCELLED,
}


# The --json names, as first published, of the batch's facts (presenters.batch_summary's names).
JSON_NAMES = {
    "id": "batch_id",
    "kind": "kind",
    "state": "state",
    "source_version": "source",
    "target_version": "target",
    "total": "total",
    "succeeded": "migrated",
    "failed": "failed",
    "skipped": "skipped",
    "conflicts": "conflicts",
    "deferred": "deferred",
    "percent": "percent",
    "requested_by": "requested_by",
}


def batch_result(batch: MigrationBatch) -> dict:
    summary = batch_summary(batch)
    result = {name: summary[key] for key, name in JSON_NAMES.items()}
    result["queue_place"] = queue_place(batch)  # queued: its place behind the batch over its source version
    return result


def waiting_note(batch: MigrationBatch) -> str:
    """What a batch that has not started waits for, for the subcommands' one-line output."""
    if batch.state == State.AWAITING_APPROVAL:
        return (
            f"; over the approval threshold, it waits for a second user: `workflows batch approve {batch.pk}` "
            "or its dashboard page"
        )
    place = queue_place(batch)
    return f"; queued, place {place}, behind the unfinished batch over {batch.source_version}" if place else ""


def add_wait_arguments(parser) -> None:
    parser.add_argument("--wait", action="store_true", help="Wait until a worker has finished the batch")
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        help=f"With --wait: stop waiting after this many seconds (exit {exit_codes.TIMED_OUT}); the batch goes on",
    )


def wait_timeout(options: dict) -> int | None:
    """--timeout read before anything starts (a bad one must not leave a batch behind)."""
    if options["timeout"] is None:
        return None
    if not options["wait"]:
        raise InvalidInput("--timeout needs --wait", field="timeout")
    return parse_whole_number(options["timeout"], "timeout", minimum=1, maximum=MAX_TIMEOUT_SECONDS)


def finish(batch: MigrationBatch, options: dict, out, timeout: int | None) -> dict:
    """The subcommand's result for a batch it started: at once, or with --wait once the batch settles,
    with the outcome, its message and the exit code (see exit_codes) the command exits with."""
    if not options["wait"]:
        return batch_result(batch)
    waited = wait_for(batch, out, timeout=timeout)
    if waited.exit_code == exit_codes.OK:
        out(waited.message)  # any other outcome's message goes to stderr with the exit code
    result = batch_result(waited.batch)
    result.update(outcome=waited.outcome, exit_code=waited.exit_code, message=waited.message)
    if waited.queue:
        result["queue"] = waited.queue
    return result


@dataclass
class Waited:
    batch: MigrationBatch
    outcome: str  # the batch's state once settled, or timed_out, or no_worker
    message: str
    queue: str = ""  # no_worker: the queue nobody consumes

    @property
    def exit_code(self) -> int:
        if self.outcome == "timed_out":
            return exit_codes.TIMED_OUT
        if self.outcome == "no_worker":
            return exit_codes.NO_WORKER
        return OUTCOMES[MigrationBatch.State(self.batch.state)]


def wait_for(batch: MigrationBatch, out, *, timeout: int | None = None, poll_seconds: float = 0.5) -> Waited:
    """Poll until the batch finishes or pauses, printing progress as it moves; give up after `timeout`
    seconds, or as soon as no worker consumes the queue the batch's chunks go to."""
    started = time.monotonic()
    asked_at = last = None
    while True:
        batch.refresh_from_db()
        progress = batch_progress(batch)
        if (progress["processed"], batch.deferred) != last:
            waiting = f", {progress['waiting_note']}" if batch.deferred else ""
            out(f"  {progress['processed']}/{batch.total} ({progress['percent']}%) {batch.state}{waiting}")
            last, moved_at = (progress["processed"], batch.deferred), time.monotonic()
        if batch.is_finished or batch.state == State.PAUSED:
            return Waited(batch, batch.state, _settled_message(batch))
        # Ask the workers at the start, then again whenever the batch stood still for a while. A
        # batch awaiting approval waits for a person, not a worker; a queued one waits for the batch
        # before it, which needs the same workers, so they are asked for it too.
        needs_worker = batch.state != State.AWAITING_APPROVAL
        if needs_worker and (asked_at is None or time.monotonic() - max(asked_at, moved_at) >= WORKER_RECHECK_SECONDS):
            missing = _no_worker(batch)
            if missing:
                return missing
            asked_at = time.monotonic()
        if timeout is not None and time.monotonic() - started >= timeout:
            message = (
                f"batch #{batch.pk} not finished after {timeout}s: {progress['processed']}/{batch.total} "
                f"processed, {batch.state}; it goes on without the wait"
            )
            return Waited(batch, "timed_out", message)
        time.sleep(poll_seconds)


def _no_worker(batch: MigrationBatch) -> Waited | None:
    """What to stop waiting with when no worker would process the batch's chunks, else None."""
    if process_batch_chunk.app.conf.task_always_eager:
        return None  # chunks run inline where they are sent: no worker is involved
    queue = batch_queue()
    try:
        if any(queue_consumers(queue, timeout=seconds) for seconds in WORKER_REPLY_SECONDS):
            return None
        reason = f"no worker consumes the queue '{queue}' that batch #{batch.pk}'s chunks are sent to"
    except BrokerUnavailable as error:
        reason = f"the broker cannot be reached to ask which workers consume the queue '{queue}' ({error})"
    message = f"{reason}; the batch stays {batch.state} and goes on once a worker consumes '{queue}'"
    return Waited(batch, "no_worker", message, queue)


def _settled_message(batch: MigrationBatch) -> str:
    what = {
        State.COMPLETED: "completed",
        State.COMPLETED_WITH_FAILURES: "completed with failures",
        State.PAUSED: f"paused (by its canary or an operator; `workflows batch resume {batch.pk}` goes on)",
        State.CANCELLED: "cancelled",
    }[MigrationBatch.State(batch.state)]
    moved = "rolled back" if batch.kind == MigrationBatch.Kind.ROLLBACK else "migrated"
    return (
        f"batch #{batch.pk} {what}: {batch.succeeded} {moved}, {batch.failed} failed, "
        f"{batch.skipped} skipped, {batch.conflicts} conflicts"
    )
