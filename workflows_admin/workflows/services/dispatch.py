"""Sending work to Celery only once the transaction that made it possible has committed."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

from django.db import transaction

# Publishing a task costs about a millisecond; past this many, one fan-out task per chunk publishes
# them from a worker, so a bulk start or a migration chunk does not wait on the broker.
FAN_OUT_THRESHOLD = 50
FAN_OUT_CHUNK = 500


def enqueue_step(instance_id: int, revision: int, countdown: float | None = None) -> None:
    from ..tasks import run_step

    options = {"countdown": countdown} if countdown else {}
    transaction.on_commit(partial(run_step.apply_async, args=(instance_id, revision), **options))


def enqueue_steps(claims: Iterable[tuple[int, int]]) -> None:
    """Send run_step for many (instance id, revision) pairs after commit, fanning out large sets."""
    from ..tasks import dispatch_steps

    claims = [(instance_id, revision) for instance_id, revision in claims]
    if not claims:
        return
    if len(claims) < FAN_OUT_THRESHOLD:
        transaction.on_commit(partial(publish_steps, claims))
        return

    def fan_out():
        for start in range(0, len(claims), FAN_OUT_CHUNK):
            dispatch_steps.apply_async(args=(claims[start : start + FAN_OUT_CHUNK],))

    transaction.on_commit(fan_out)


def publish_steps(claims: Iterable[tuple[int, int]]) -> int:
    """Publish one run_step per pair now (the fan-out task calls this); duplicates are harmless."""
    from ..tasks import run_step

    sent = 0
    for instance_id, revision in claims:
        run_step.apply_async(args=(instance_id, revision))
        sent += 1
    return sent
