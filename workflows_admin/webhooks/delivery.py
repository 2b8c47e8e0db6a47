"""Sending a delivery: signed POST, one claimed attempt at a time, retried with backoff, then given up.

Signature: `X-Workflows-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the secret>`,
the timestamp (Unix seconds, per attempt) in `X-Workflows-Timestamp`, so a receiver can refuse
replays of old deliveries.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from datetime import timedelta

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from .models import WebhookDelivery

logger = logging.getLogger(__name__)
State = WebhookDelivery.State
# A task lost with its worker (or a broker that was down) leaves a due delivery: the periodic resend
# sends it again once it has been due this long.
RESEND_GRACE = timedelta(seconds=30)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def backoff(attempts: int) -> float:
    """Seconds before the attempt after `attempts` failed ones: doubling, at most an hour."""
    return min(settings.WORKFLOWS_WEBHOOK_RETRY_SECONDS * 2 ** (attempts - 1), 3600.0)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # a redirect is an answer that is not 2xx: recorded and retried


_opener = urllib.request.build_opener(_NoRedirects)


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _opener.open(request, timeout=settings.WORKFLOWS_WEBHOOK_TIMEOUT_SECONDS) as response:
            return response.status, ""
    except urllib.error.HTTPError as error:
        return error.code, f"HTTP {error.code} {error.reason}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        return None, f"{type(error).__name__}: {getattr(error, 'reason', error)}"


def deliver(delivery_id: int) -> str:
    """One attempt, if the delivery is pending and due; safe to call twice at once (one claims it)."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.WORKFLOWS_WEBHOOK_TIMEOUT_SECONDS + 30)
    claimed = WebhookDelivery.objects.filter(pk=delivery_id, state=State.PENDING, next_attempt_at__lte=now).update(
        next_attempt_at=lease, attempts=F("attempts") + 1
    )
    if not claimed:
        return "not due"
    delivery = WebhookDelivery.objects.select_related("subscription").get(pk=delivery_id)
    mine = WebhookDelivery.objects.filter(pk=delivery_id, attempts=delivery.attempts, state=State.PENDING)
    subscription = delivery.subscription
    if not subscription.active:
        mine.update(state=State.FAILED, last_error="the subscription was deactivated")
        return "inactive"
    body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
    timestamp = str(int(time.time()))
    status, error = _post(
        subscription.url,
        body,
        {
            "Content-Type": "application/json",
            "User-Agent": "workflows-admin-webhooks",
            "X-Workflows-Event": delivery.event,
            "X-Workflows-Delivery": str(delivery.pk),
            "X-Workflows-Timestamp": timestamp,
            "X-Workflows-Signature": sign(subscription.secret, timestamp, body),
        },
    )
    done = timezone.now()
    if status is not None and 200 <= status < 300:
        mine.update(state=State.DELIVERED, delivered_at=done, last_status_code=status, last_error="")
        return "delivered"
    error = error or f"HTTP {status}"
    if delivery.attempts >= settings.WORKFLOWS_WEBHOOK_MAX_ATTEMPTS:
        mine.update(state=State.FAILED, last_status_code=status, last_error=error)
        logger.warning("webhook delivery %s gave up after %s attempts: %s", delivery.pk, delivery.attempts, error)
        return "failed"
    delay = backoff(delivery.attempts)
    mine.update(last_status_code=status, last_error=error, next_attempt_at=done + timedelta(seconds=delay))
    from .outbox import publish

    publish([delivery.pk], countdown=delay)
    return "retrying"


def resend_due(limit: int = 1000) -> int:
    """Send again the pending deliveries whose task was lost: due for longer than the grace."""
    from .outbox import publish

    ids = list(
        WebhookDelivery.objects.filter(state=State.PENDING, next_attempt_at__lte=timezone.now() - RESEND_GRACE)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    publish(ids)
    return len(ids)
