"""Creating, changing and removing subscriptions, checked the same way from the admin and the API."""

from __future__ import annotations

import secrets
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction

from workflows_admin.workflows.services import audit
from workflows_admin.workflows.services.audit import Actor
from workflows_admin.workflows.services.errors import InvalidInput
from workflows_admin.workflows.services.lookup import row_by_id

from .events import EVENTS
from .models import WebhookSubscription

_url = URLValidator(schemes=["http", "https"])
URL_LENGTH = 2000


def check_url(url: Any) -> str:
    if not isinstance(url, str) or len(url) > URL_LENGTH or not url.isprintable():
        raise InvalidInput(f"url must be an http(s) URL of at most {URL_LENGTH} characters", field="url")
    try:
        _url(url)
    except ValidationError:
        raise InvalidInput(f"url must be an http(s) URL, got {url[:80]!r}", field="url") from None
    return url


def check_events(events: Any) -> list[str]:
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise InvalidInput(f"events must be a non-empty list of event names: {', '.join(EVENTS)}", field="events")
    unknown = sorted({e for e in events if e not in EVENTS}, key=str)
    if unknown:
        shown = ", ".join(repr(e[:40]) for e in unknown[:5])
        raise InvalidInput(f"unknown event(s) {shown}; known: {', '.join(EVENTS)}", field="events")
    return sorted(set(events))


def check_secret(secret: Any) -> str:
    """A secret given (16 to 200 printable ASCII characters), or a new random one."""
    if secret is None or secret == "":
        return secrets.token_urlsafe(32)
    if not isinstance(secret, str) or not 16 <= len(secret) <= 200 or not (secret.isascii() and secret.isprintable()):
        raise InvalidInput(
            "secret must be 16 to 200 printable ASCII characters (or empty: one is made)", field="secret"
        )
    return secret


def check_description(description: Any) -> str:
    if not isinstance(description, str) or len(description) > 200 or not description.isprintable():
        raise InvalidInput("description must be printable text of at most 200 characters", field="description")
    return description


def _described(subscription: WebhookSubscription) -> dict:
    return {"url": subscription.url, "events": subscription.events, "active": subscription.active}


def create_subscription(
    *, url: Any, events: Any, secret: Any = None, active: bool = True, description: Any = "", actor: Actor = None
) -> WebhookSubscription:
    subscription = WebhookSubscription(
        url=check_url(url),
        events=check_events(events),
        secret=check_secret(secret),
        active=bool(active),
        description=check_description(description),
        created_by=audit.actor_user(actor),
    )
    with transaction.atomic():
        subscription.save()
        audit.record(
            "webhook.subscription_created",
            actor=actor,
            message=f"webhook #{subscription.pk} to {subscription.url}",
            details={"subscription": subscription.pk, **_described(subscription)},
        )
    return subscription


CHECKS = {"url": check_url, "events": check_events, "secret": check_secret, "description": check_description}


def locked_subscription(subscription_id: Any) -> WebhookSubscription:
    rows = WebhookSubscription.objects.select_for_update()
    return row_by_id(rows, subscription_id, "subscription", noun="webhook subscription")


def update_subscription(subscription_id: Any, *, actor: Actor = None, **changes: Any) -> WebhookSubscription:
    """Change the given fields (url, events, secret, active, description); the others stay."""
    with transaction.atomic():
        subscription = locked_subscription(subscription_id)
        for name, value in changes.items():
            if name == "active":
                subscription.active = bool(value)
            elif name in CHECKS:
                setattr(subscription, name, CHECKS[name](value))
            else:
                raise InvalidInput(f"unknown field {name!r}", field=name)
        subscription.save()
        audit.record(
            "webhook.subscription_changed",
            actor=actor,
            message=f"webhook #{subscription.pk}: changed {', '.join(sorted(changes)) or 'nothing'}",
            details={"subscription": subscription.pk, **_described(subscription)},
        )
    return subscription


def delete_subscription(subscription_id: Any, *, actor: Actor = None) -> None:
    with transaction.atomic():
        subscription = locked_subscription(subscription_id)
        pk, described = subscription.pk, _described(subscription)
        subscription.delete()
        audit.record(
            "webhook.subscription_deleted",
            actor=actor,
            message=f"webhook #{pk} to {described['url']} deleted",
            details={"subscription": pk, **described},
        )
