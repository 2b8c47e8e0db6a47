"""Thin Celery tasks for webhooks: each is safe to deliver more than once (an attempt is claimed)."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from . import delivery

DATABASE_ERRORS = (OperationalError, InterfaceError)


@shared_task(acks_late=True, autoretry_for=DATABASE_ERRORS, retry_backoff=True, max_retries=5)
def deliver_webhook(delivery_id: int) -> str:
    return delivery.deliver(delivery_id)


@shared_task(acks_late=True, autoretry_for=DATABASE_ERRORS, retry_backoff=True, max_retries=5)
def resend_undelivered_webhooks() -> int:
    return delivery.resend_due()
