"""Thin Celery tasks: each takes ids, calls one service, and is safe to deliver more than once."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from .services import batches, cleanup, code_guard, dispatch, rollouts, samples, steps, upgrades

# A dropped database connection or a restarting database is retried; the services are idempotent.
DATABASE_ERRORS = (OperationalError, InterfaceError)
# Periodic and control tasks: acknowledged after they ran, a few retries on database errors (the
# next period runs them again anyway).
periodic_task = shared_task(acks_late=True, autoretry_for=DATABASE_ERRORS, retry_backoff=True, max_retries=5)


@shared_task(
    bind=True,
    acks_late=True,
    max_retries=None,
    autoretry_for=DATABASE_ERRORS,
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
)
def run_step(self, instance_id: int, revision: int) -> str:
    try:
        return steps.run_step(instance_id, revision)
    except steps.ClaimBusy as busy:
        raise self.retry(countdown=busy.retry_in) from None


@shared_task(acks_late=True)
def dispatch_steps(claims: list[list[int]]) -> int:
    return dispatch.publish_steps(claims)


@periodic_task
def recover_stalled_steps() -> int:
    return steps.recover_stalled_steps()


@periodic_task
def sample_in_flight_counts() -> int:
    return samples.sample_in_flight_counts()


@periodic_task
def clean_up_stale_instances() -> int:
    """Expire or migrate instances past their max lifetime; returns how many were handled."""
    plan = cleanup.run_cleanup()
    return plan.expired + plan.migrating


@periodic_task
def resume_parked_instances() -> int:
    """During a rolling deploy an old worker may park an instance again; whichever worker has the code resumes it."""
    return sum(code_guard.resume_parked(actor="system:resume").values())


@shared_task(acks_late=True, autoretry_for=DATABASE_ERRORS, retry_backoff=1, retry_backoff_max=30, max_retries=None)
def process_batch_chunk(batch_id: int, after: int = 0, chain: int | None = None) -> str:
    return batches.process_batch(batch_id, after, chain)


@periodic_task
def resume_stalled_batches() -> int:
    return batches.resume_stalled_batches()


@periodic_task
def discard_stale_drafts() -> int:
    return batches.discard_stale_drafts()


@periodic_task
def tick_rollouts() -> dict:
    return rollouts.tick_rollouts()


@periodic_task
def sweep_auto_upgrades() -> int:
    """Waiting and parked instances reach no step boundary: move those of auto-upgrade versions."""
    return upgrades.sweep_auto_upgrades()
