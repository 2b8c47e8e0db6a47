"""Creating, revoking and checking API tokens. The token itself is shown once and never stored."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from workflows_admin.workflows.services import audit
from workflows_admin.workflows.services.audit import Actor
from workflows_admin.workflows.services.errors import Conflict, InvalidInput, NotFound
from workflows_admin.workflows.services.lookup import row_by_id

from .models import ApiToken

PREFIX = "wa_"
PREFIX_SHOWN = 10
NAME_LENGTH = 200
# last_used_at is written at most this often per token: not one UPDATE per request.
TOUCH_EVERY = timedelta(minutes=1)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _user(user: Any):
    if not isinstance(user, str):
        return user
    found = get_user_model().objects.filter(username=user).first() if user.isprintable() else None
    if found is None:
        raise NotFound(f"no user {user[:80]!r}", field="user")
    return found


def create_token(user: Any, *, name: str = "", actor: Actor = None) -> tuple[ApiToken, str]:
    """A new token for `user` (a User or a username); returns the row and the token, shown only now."""
    user = _user(user)
    if not isinstance(name, str) or len(name) > NAME_LENGTH or not name.isprintable():
        raise InvalidInput(f"name must be printable text of at most {NAME_LENGTH} characters", field="name")
    if not user.is_active:
        raise Conflict(f"user {user.get_username()} is inactive; activate it first", field="user")
    token = PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        row = ApiToken.objects.create(
            user=user, name=name, prefix=token[:PREFIX_SHOWN], digest=digest(token), created_by=audit.actor_label(actor)
        )
        audit.record(
            "api.token_created",
            actor=actor,
            message=f"API token #{row.pk} ({row.prefix}...) for {user.get_username()}",
            details={"token": row.pk, "user": user.get_username(), "name": name},
        )
    return row, token


def revoke_token(token_id: Any, *, actor: Actor = None) -> ApiToken:
    with transaction.atomic():
        row = row_by_id(
            ApiToken.objects.select_for_update().select_related("user"), token_id, "token", noun="API token"
        )
        if row.revoked_at is not None:
            raise Conflict(f"API token #{row.pk} was already revoked", field="token")
        row.revoked_at = timezone.now()
        row.save(update_fields=["revoked_at"])
        audit.record(
            "api.token_revoked",
            actor=actor,
            message=f"API token #{row.pk} ({row.prefix}...) of {row.user.get_username()} revoked",
            details={"token": row.pk, "user": row.user.get_username()},
        )
    return row


def user_for(token: str):
    """The active user a live token belongs to, or None."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    row = ApiToken.objects.select_related("user").filter(digest=digest(token), revoked_at__isnull=True).first()
    if row is None or not row.user.is_active:
        return None
    now = timezone.now()
    if row.last_used_at is None or now - row.last_used_at > TOUCH_EVERY:
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
    return row.user
