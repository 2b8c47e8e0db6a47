"""The audit log, with filters."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Query, Router

from workflows_admin.workflows import listings
from workflows_admin.workflows.permissions import VIEW
from workflows_admin.workflows.services import batches, lifecycle
from workflows_admin.workflows.services.errors import InvalidInput
from workflows_admin.workflows.services.numbers import MAX_ID

from .. import serializers
from ..auth import require
from ..pagination import Limit, paginate
from ..schemas import AuditPage
from . import with_errors

router = Router(tags=["audit"])


def _text(value: str, field: str) -> str:
    if len(value) > 200 or not value.isprintable():
        raise InvalidInput(f"{field} must be printable text of at most 200 characters", field=field)
    return value


@router.get("/audit-events", response=with_errors({200: AuditPage}), summary="Audit events, newest first")
def list_audit_events(
    request: HttpRequest,
    action: str | None = Query(None, description="Action, or its start: batch. for every batch event"),
    actor: str | None = None,
    workflow: str | None = None,
    instance: int | None = Query(None, ge=1, le=MAX_ID),
    batch: int | None = Query(None, ge=1, le=MAX_ID),
    since: str | None = None,
    until: str | None = None,
    cursor: str | None = None,
    limit: Limit = 50,
):
    require(request, VIEW)
    rows = listings.audit_events(
        action=None if action is None else _text(action, "action"),
        actor=None if actor is None else _text(actor, "actor"),
        workflow=None if workflow is None else lifecycle.check_workflow_name(workflow),
        instance=instance,
        batch=batch,
        since=None if since is None else batches.parse_moment(since, "since"),
        until=None if until is None else batches.parse_moment(until, "until"),
    )
    return paginate(rows, cursor, limit, serializers.audit_event)
