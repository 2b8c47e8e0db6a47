"""Every error the API answers, in one shape: RFC 9457 problem details, naming the field at fault.

{"type": "/api/v1/problems/conflict", "title": "Conflict", "status": 409,
 "detail": "batch #12 is running; ...", "field": "batch", "errors": [{"field": ..., "detail": ...}]}
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import OperationalError
from django.http import Http404, HttpRequest, HttpResponse
from ninja.errors import AuthenticationError, HttpError, ValidationError
from psycopg.errors import DeadlockDetected

from workflows_admin.workflows.services.errors import ServiceError

logger = logging.getLogger(__name__)
CONTENT_TYPE = "application/problem+json"
TYPES = {
    400: "invalid-input",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    422: "idempotency-key-reused",
    429: "too-many-requests",
    500: "server-error",
    503: "retry-later",
}
# A deadlock victim's transaction was rolled back whole: nothing changed, and the same request can act.
DEADLOCK_DETAIL = "the database chose this request as a deadlock victim; nothing was changed; send it again"


def problem(status: int, detail: str, *, field: str | None = None, errors: list[dict] | None = None) -> HttpResponse:
    body: dict[str, Any] = {
        "type": f"/api/v1/problems/{TYPES.get(status, 'error')}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "field": field,
    }
    if errors is not None:
        body["errors"] = errors
    response = HttpResponse(json.dumps(body, ensure_ascii=True), status=status, content_type=CONTENT_TYPE)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="workflows-admin"'
    return response


def is_deadlock_victim(response: HttpResponse) -> bool:
    return getattr(response, "deadlock_victim", False)


def deadlock_victim() -> HttpResponse:
    """503 with Retry-After; the response is marked so the idempotency wrapper can retry it itself."""
    response = problem(503, DEADLOCK_DETAIL)
    response["Retry-After"] = "1"
    response.deadlock_victim = True  # type: ignore[attr-defined]
    return response


def from_service_error(error: ServiceError) -> HttpResponse:
    return problem(error.status_code, error.message, field=error.field)


def _field_of(location: tuple | list) -> str:
    """pydantic's location without where it came from: ("body", "payload", "selection", "ids") -> selection.ids."""
    parts = [str(part) for part in location]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    if parts and parts[0] == "payload":  # the name ninja gives a whole-body schema
        parts = parts[1:]
    return ".".join(parts) or "body"


def from_validation_error(error: ValidationError) -> HttpResponse:
    errors = [{"field": _field_of(e.get("loc", ())), "detail": str(e.get("msg", "invalid"))} for e in error.errors]
    first = errors[0] if errors else {"field": "body", "detail": "invalid"}
    return problem(400, f"{first['field']}: {first['detail']}", field=first["field"], errors=errors)


def install(api) -> None:
    """Map every exception the API can meet to a problem response."""

    def handle(request: HttpRequest, exc: Exception) -> HttpResponse:
        if isinstance(exc, ServiceError):
            return from_service_error(exc)
        if isinstance(exc, ValidationError):
            return from_validation_error(exc)
        if isinstance(exc, AuthenticationError):
            return problem(401, "send a valid API token: Authorization: Bearer <token>", field="Authorization")
        if isinstance(exc, HttpError):  # e.g. a body that is not JSON
            field = "body" if exc.status_code == 400 else None
            return problem(exc.status_code, exc.message, field=field)
        if isinstance(exc, PermissionDenied):
            return problem(403, str(exc) or "permission denied", field=None)
        if isinstance(exc, Http404):
            return problem(404, str(exc) or "not found")
        if isinstance(exc, OperationalError) and isinstance(exc.__cause__, DeadlockDetected):
            logger.warning("API request %s %s was a deadlock victim", request.method, request.path)
            return deadlock_victim()
        logger.exception("API error on %s %s", request.method, request.path)
        return problem(500, "unexpected server error; it was logged")

    for kind in (Exception, ServiceError, ValidationError, HttpError, PermissionDenied, Http404, OperationalError):
        api.add_exception_handler(kind, handle)
