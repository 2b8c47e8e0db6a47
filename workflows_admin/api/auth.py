"""Bearer tokens, and the permission check every endpoint makes (the names: workflows/permissions.py)."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from ninja.security import HttpBearer

from . import tokens

_UNSET = object()


def token_user(request: HttpRequest):
    """The user of the request's bearer token, or None; looked up once per request."""
    cached = getattr(request, "_api_token_user", _UNSET)
    if cached is not _UNSET:
        return cached
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    user = tokens.user_for(token.strip()) if scheme.lower() == "bearer" else None
    request._api_token_user = user  # type: ignore[attr-defined]
    if user is not None:
        request.user = user  # the actor every service call audits
    return user


class TokenAuth(HttpBearer):
    def __call__(self, request: HttpRequest):
        return token_user(request)

    def authenticate(self, request: HttpRequest, token: str):  # required by HttpBearer; __call__ decides
        return token_user(request)


def require(request: HttpRequest, permission: str) -> None:
    if not request.user.has_perm(permission):
        raise PermissionDenied(f"needs the permission {permission}")
