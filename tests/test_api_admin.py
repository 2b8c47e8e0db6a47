"""Tokens and webhooks in the Django admin: created and revoked through the same services, audited."""

import re

import pytest
from django.contrib.messages import get_messages

from workflows_admin.api import tokens
from workflows_admin.api.models import ApiToken
from workflows_admin.webhooks.models import WebhookDelivery, WebhookSubscription
from workflows_admin.workflows.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_the_admin_creates_a_token_shown_once_and_revokes_it(client, operator):
    client.force_login(operator)
    response = client.post("/admin/api/apitoken/add/", {"user": operator.pk, "name": "deploys"}, follow=True)
    assert response.status_code == 200
    shown = " ".join(str(m) for m in get_messages(response.wsgi_request)) + response.content.decode()
    token = re.search(r"wa_[A-Za-z0-9_-]{40,}", shown).group(0)
    row = ApiToken.objects.get()
    assert row.digest == tokens.digest(token) and row.name == "deploys" and token not in row.prefix
    assert tokens.user_for(token) == operator
    page = client.get(f"/admin/api/apitoken/{row.pk}/change/")
    assert token not in page.content.decode()  # never shown again
    client.post("/admin/api/apitoken/", {"action": "revoke", "_selected_action": [row.pk]})
    assert tokens.user_for(token) is None
    assert list(AuditEvent.objects.filter(action__startswith="api.").values_list("action", "actor_label")) == [
        ("api.token_revoked", "operator"),
        ("api.token_created", "operator"),
    ]


def test_the_admin_manages_subscriptions_and_shows_the_delivery_log(client, operator):
    client.force_login(operator)
    form = {"url": "https://hooks.example/ci", "events": ["batch.finished", "rollout.halted"], "active": "on"}
    assert client.post("/admin/webhooks/webhooksubscription/add/", form).status_code == 302
    subscription = WebhookSubscription.objects.get()
    assert subscription.events == ["batch.finished", "rollout.halted"] and len(subscription.secret) >= 32
    refused = client.post("/admin/webhooks/webhooksubscription/add/", {**form, "url": "ftp://x/"})
    assert refused.status_code == 200 and WebhookSubscription.objects.count() == 1
    WebhookDelivery.objects.create(
        subscription=subscription,
        event="batch.finished",
        payload={},
        attempts=3,
        last_status_code=500,
        last_error="HTTP 500 Internal Server Error",
        next_attempt_at="2026-12-01T00:00:00Z",
    )
    log = client.get("/admin/webhooks/webhookdelivery/").content.decode()
    assert "HTTP 500 Internal Server Error" in log and "batch.finished" in log
    assert AuditEvent.objects.filter(action="webhook.subscription_created", actor_label="operator").exists()
