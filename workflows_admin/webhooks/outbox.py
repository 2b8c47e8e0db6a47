"""Writing an event's deliveries in the transaction of the action that caused it.

`services.audit.record` calls `enqueue` right after writing the audit event, inside the same
transaction: the deliveries commit with the change or not at all. They are sent after commit by a
Celery task; the action itself only inserts rows, so a slow or failing receiver never holds it up.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from django.db import transaction
from django.utils import timezone

from .events import EVENTS_BY_ACTION
from .models import WebhookDelivery, WebhookSubscription

# The batch's facts a payload carries, as first published (receivers may check the shape).
BATCH_KEYS = frozenset(
    ("id", "kind", "state", "source_version", "target_version", "total", "succeeded", "failed", "skipped", "conflicts")
)


def notifies(action: str) -> bool:
    return action in EVENTS_BY_ACTION


def enqueue(event: Any) -> list[int]:
    """One pending delivery per active subscription to the event's name; sent after commit."""
    name = EVENTS_BY_ACTION.get(event.action)
    if name is None:
        return []
    # Few subscriptions, and JSON containment is not portable to SQLite (the demo): filtered here.
    subscriptions = [s for s in WebhookSubscription.objects.filter(active=True) if name in (s.events or [])]
    if not subscriptions:
        return []
    payload = build_payload(event, name)
    now = timezone.now()
    rows = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(subscription=s, event=name, audit_event=event, payload=payload, next_attempt_at=now)
        for s in subscriptions
    )
    ids = [row.pk for row in rows]
    transaction.on_commit(partial(publish, ids))
    return ids


def publish(ids: list[int], countdown: float | None = None) -> None:
    from workflows_admin.workflows.services.dispatch import publish as publish_task

    from .tasks import deliver_webhook

    options = {"countdown": countdown} if countdown else {}
    for delivery_id in ids:  # a broker that is down: the periodic resend takes them
        publish_task(deliver_webhook, (delivery_id,), **options)


def build_payload(event: Any, name: str) -> dict[str, Any]:
    # The audit service imports this module, and the presenter the selectors, which import the services.
    from workflows_admin.workflows.presenters import batch_summary

    batch = event.batch if event.batch_id else None
    return {
        "event": name,
        "occurred_at": event.created_at.isoformat(),
        "audit_event_id": event.pk,
        "actor": event.actor_label,
        "message": event.message,
        "workflow": event.workflow.name if event.workflow_id else None,
        "version": event.version.version if event.version_id else None,
        "instance_id": event.instance_id,
        "batch": None
        if batch is None
        else {key: value for key, value in batch_summary(batch).items() if key in BATCH_KEYS},
        "details": event.details,
    }
