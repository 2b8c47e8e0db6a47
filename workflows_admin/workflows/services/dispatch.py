"""Sending work to Celery only once the transaction that made it possible has committed.

The change is committed before its task is published, so a broker that is down cannot undo it, and
must not turn it into an error either: the operator's action took effect. A task that could not be
sent is logged and left to the periodic recovery, which re-sends pending steps (recover_stalled_steps)
and replaces the chains of batches whose lease ran out (resume_stalled_batches).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

from django.db import transaction
from kombu.exceptions import OperationalError as BrokerUnavailable

__all__ = [
    "BrokerUnavailable",
    "batch_queue",
    "enqueue_step",
    "enqueue_steps",
    "publish",
    "publish_steps",
    "queue_consumers",
]

logger = logging.getLogger(__name__)

# Publishing a task costs about a millisecond; past this many, one fan-out task per chunk publishes
# them from a worker, so a bulk start or a migration chunk does not wait on the broker.
FAN_OUT_THRESHOLD = 50
FAN_OUT_CHUNK = 500


def publish(task: Any, args: tuple[Any, ...], **options: Any) -> bool:
    """Send one task now; False (logged) when the broker cannot be reached."""
    try:
        task.apply_async(args=args, **options)
        return True
    except BrokerUnavailable as error:
        logger.warning("broker unavailable, %s%r left to periodic recovery: %s", task.name, args, error)
        return False


def enqueue_step(instance_id: int, revision: int, countdown: float | None = None) -> None:
    from ..tasks import run_step

    options = {"countdown": countdown} if countdown else {}
    transaction.on_commit(partial(publish, run_step, (instance_id, revision), **options))


def enqueue_steps(claims: Iterable[tuple[int, int]]) -> None:
    """Send run_step for many (instance id, revision) pairs after commit, fanning out large sets."""
    from ..tasks import dispatch_steps

    claims = [(instance_id, revision) for instance_id, revision in claims]
    if not claims:
        return
    if len(claims) < FAN_OUT_THRESHOLD:
        transaction.on_commit(partial(publish_steps, claims))
        return

    def fan_out() -> None:
        for start in range(0, len(claims), FAN_OUT_CHUNK):
            publish(dispatch_steps, (claims[start : start + FAN_OUT_CHUNK],))

    transaction.on_commit(fan_out)


def publish_steps(claims: Iterable[Sequence[int]]) -> int:
    """Publish one run_step per pair now (the fan-out task calls this); duplicates are harmless."""
    from ..tasks import run_step

    return sum(publish(run_step, (instance_id, revision)) for instance_id, revision in claims)


def batch_queue() -> str:
    """The queue a batch's chunk tasks go to, as the Celery routing configuration decides it."""
    from ..tasks import process_batch_chunk

    queue = process_batch_chunk.app.amqp.router.route({}, process_batch_chunk.name)["queue"]
    return str(getattr(queue, "name", queue))


def queue_consumers(queue: str, timeout: float = 1.0) -> list[str]:
    """The workers consuming `queue`, asked over Celery's remote control; each has `timeout` seconds to answer.

    Raises BrokerUnavailable when the broker cannot be reached to ask.
    """
    from ..tasks import process_batch_chunk

    replies = process_batch_chunk.app.control.inspect(timeout=timeout).active_queues() or {}
    return sorted(worker for worker, queues in replies.items() if any(q.get("name") == queue for q in queues or ()))
