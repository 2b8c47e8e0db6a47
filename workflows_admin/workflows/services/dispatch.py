"""Sending work to Celery only once the transaction that made it possible has committed."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

from django.db import transaction


def enqueue_step(instance_id: int, revision: int, countdown: float | None = None) -> None:
    from ..tasks import run_step

    options = {"countdown": countdown} if countdown else {}
    transaction.on_commit(partial(run_step.apply_async, args=(instance_id, revision), **options))


def enqueue_steps(claims: Iterable[tuple[int, int]]) -> None:
    """One on-commit callback for many instances (bulk starts, migrations)."""
    from ..tasks import run_step

    claims = list(claims)
    if not claims:
        return

    def send():
        for instance_id, revision in claims:
            run_step.apply_async(args=(instance_id, revision))

    transaction.on_commit(send)
