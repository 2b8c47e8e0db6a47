"""The audit log: one place that records who did what."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction

from workflows_admin.webhooks import outbox

from ..models import AuditEvent

# Who acts, as every service takes it: a user (`request.user`: the views let only logged-in users
# through), a label for the command line or the system ("cli:<user>", "system:cleanup"), or None
# (recorded as "system").
type Actor = User | AnonymousUser | str | None


def actor_user(actor: Actor) -> User | None:
    """The user who acts, or None for a command-line or system label, an anonymous user or nobody."""
    return actor if isinstance(actor, User) else None


def actor_label(actor: Actor) -> str:
    """A user's name, or the given system label (e.g. 'system:cleanup'), or 'system'."""
    if isinstance(actor, str):
        return actor
    user = actor_user(actor)
    return user.get_username() if user is not None else "system"


def record(action: str, *, actor: Actor = None, message: str = "", **refs: Any) -> AuditEvent:
    """Record one event in the caller's transaction, so the event exists exactly when the change does.

    An event that webhooks notify (webhooks/events.py) gets its deliveries written in the same
    transaction; they are sent after commit.
    """
    details = refs.pop("details", {})
    user = actor_user(actor)
    fields = dict(action=action, actor=user, actor_label=actor_label(actor), message=message, details=details, **refs)
    if not outbox.notifies(action):
        return AuditEvent.objects.create(**fields)
    with transaction.atomic():  # the event and its deliveries, together, even for a caller in autocommit
        event = AuditEvent.objects.create(**fields)
        outbox.enqueue(event)
    return event


def record_per_instance(
    action: str, instance_ids: list[int], *, actor: Actor = None, message: str = "", **refs: Any
) -> list[AuditEvent]:
    """One event per instance of a bulk action, in one INSERT, so each instance's history shows it."""
    details = refs.pop("details", {})
    user = actor_user(actor)
    label = actor_label(actor)
    return AuditEvent.objects.bulk_create(
        AuditEvent(
            action=action,
            actor=user,
            actor_label=label,
            message=message,
            details=details,
            instance_id=instance_id,
            **refs,
        )
        for instance_id in instance_ids
    )
