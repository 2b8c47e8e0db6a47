"""The audit log: one place that records who did what."""

from __future__ import annotations

from typing import Any

from ..models import AuditEvent


def actor_label(actor: Any) -> str:
    """A user's name, or the given system label (e.g. 'system:cleanup'), or 'system'."""
    if isinstance(actor, str):
        return actor
    if actor is not None and getattr(actor, "is_authenticated", False):
        return actor.get_username()
    return "system"


def record(action: str, *, actor: Any = None, message: str = "", **refs: Any) -> AuditEvent:
    """Record one event in the caller's transaction, so the event exists exactly when the change does."""
    details = refs.pop("details", {})
    user = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    return AuditEvent.objects.create(
        action=action, actor=user, actor_label=actor_label(actor), message=message, details=details, **refs
    )


def record_per_instance(
    action: str, instance_ids: list[int], *, actor: Any = None, message: str = "", **refs: Any
) -> list[AuditEvent]:
    """One event per instance of a bulk action, in one INSERT, so each instance's history shows it."""
    details = refs.pop("details", {})
    user = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
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
