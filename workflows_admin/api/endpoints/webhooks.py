"""Webhook subscriptions and their delivery log (Django's model permissions on subscriptions)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from ninja import Router, Status
from ninja.decorators import decorate_view

from workflows_admin.webhooks import subscriptions
from workflows_admin.webhooks.events import EVENTS
from workflows_admin.webhooks.models import WebhookDelivery, WebhookSubscription
from workflows_admin.workflows.permissions import ADD_WEBHOOKS, CHANGE_WEBHOOKS, DELETE_WEBHOOKS, VIEW_WEBHOOKS
from workflows_admin.workflows.services.lookup import row_by_id

from ..auth import require
from ..idempotency import idempotent
from ..pagination import Limit, RowId, paginate
from ..schemas import DeliveryPage, WebhookIn, WebhookOut, WebhookPage, WebhookPatch
from . import with_errors

router = Router(tags=["webhooks"])


def _out(row: WebhookSubscription, *, secret: bool = False) -> dict:
    return {
        "id": row.pk,
        "url": row.url,
        "events": row.events,
        "active": row.active,
        "description": row.description,
        "created_at": row.created_at,
        "secret": row.secret if secret else None,
    }


def _delivery(row: WebhookDelivery) -> dict:
    return {
        "id": row.pk,
        "event": row.event,
        "state": row.state,
        "attempts": row.attempts,
        "last_status_code": row.last_status_code,
        "last_error": row.last_error,
        "next_attempt_at": row.next_attempt_at,
        "created_at": row.created_at,
        "delivered_at": row.delivered_at,
        "payload": row.payload,
    }


def _subscription(subscription_id: int) -> WebhookSubscription:
    return row_by_id(WebhookSubscription.objects.all(), subscription_id, "subscription", noun="webhook subscription")


@router.get(
    "/webhooks", response=with_errors({200: WebhookPage}), summary=f"Subscriptions. Events: {', '.join(EVENTS)}"
)
def list_webhooks(request: HttpRequest, cursor: str | None = None, limit: Limit = 50):
    require(request, VIEW_WEBHOOKS)
    return paginate(WebhookSubscription.objects.all(), cursor, limit, _out)


@router.post(
    "/webhooks",
    response=with_errors({201: WebhookOut}),
    summary="Subscribe a URL to events; the answer carries the signing secret (made when not given), once",
)
@decorate_view(idempotent)
def create_webhook(request: HttpRequest, payload: WebhookIn):
    require(request, ADD_WEBHOOKS)
    row = subscriptions.create_subscription(**payload.model_dump(), actor=request.user)
    return Status(201, _out(row, secret=True))


@router.get("/webhooks/{subscription_id}", response=with_errors({200: WebhookOut}), summary="One subscription")
def get_webhook(request: HttpRequest, subscription_id: RowId):
    require(request, VIEW_WEBHOOKS)
    return _out(_subscription(subscription_id))


@router.patch("/webhooks/{subscription_id}", response=with_errors({200: WebhookOut}), summary="Change it")
def change_webhook(request: HttpRequest, subscription_id: RowId, payload: WebhookPatch):
    require(request, CHANGE_WEBHOOKS)
    changes = payload.model_dump(exclude_unset=True)
    return _out(subscriptions.update_subscription(subscription_id, actor=request.user, **changes))


@router.delete("/webhooks/{subscription_id}", response=with_errors({204: None}), summary="Delete it")
def delete_webhook(request: HttpRequest, subscription_id: RowId):
    require(request, DELETE_WEBHOOKS)
    subscriptions.delete_subscription(subscription_id, actor=request.user)
    return HttpResponse(status=204)


@router.get(
    "/webhooks/{subscription_id}/deliveries",
    response=with_errors({200: DeliveryPage}),
    summary="Its delivery log: state, attempts, last status code and error",
)
def list_deliveries(request: HttpRequest, subscription_id: RowId, cursor: str | None = None, limit: Limit = 50):
    require(request, VIEW_WEBHOOKS)
    return paginate(_subscription(subscription_id).deliveries.all(), cursor, limit, _delivery)
