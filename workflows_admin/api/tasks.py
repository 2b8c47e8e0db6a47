from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from .models import IdempotencyRecord


@shared_task(acks_late=True, autoretry_for=(OperationalError, InterfaceError), retry_backoff=True, max_retries=5)
def discard_old_idempotency_keys() -> int:
    """A key is a retry window, not a ledger: its stored response goes after WORKFLOWS_IDEMPOTENCY_HOURS."""
    cutoff = timezone.now() - timedelta(hours=settings.WORKFLOWS_IDEMPOTENCY_HOURS)
    return IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()[0]
