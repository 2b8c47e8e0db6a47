"""Webhooks: the outbox is written with the action, delivered signed after commit to a real HTTP receiver,
retried when the receiver fails, recorded; a failing receiver never slows the action."""

import hashlib
import hmac
import json
import re
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.db import transaction
from django.utils import timezone

from workflows_admin.webhooks import delivery, subscriptions
from workflows_admin.webhooks.models import WebhookDelivery, WebhookSubscription
from workflows_admin.workflows.models import AuditEvent, Workflow, WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.runtime import get_registry
from workflows_admin.workflows.services import batches, lifecycle
from workflows_admin.workflows.services.cleanup import run_cleanup
from workflows_admin.workflows.services.errors import InvalidInput
from workflows_admin.workflows.services.instances import start_workflow
from workflows_admin.workflows.services.steps import run_step

from . import workflows_for_tests
from .helpers import run_batch, waiting_instances
from .worker import WorkerProcess, purge_broker, wait_until

SECRET = "a-test-secret-of-some-length"


class Receiver:
    """http.server on 127.0.0.1 in a thread: records each POST, answers with the next of `statuses` (then 200)."""

    def __init__(self, statuses=(), delay: float = 0.0):
        self.requests: list[dict] = []
        self.statuses = list(statuses)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                time.sleep(delay)
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(statuses=(), delay=0.0):
        made.append(Receiver(statuses, delay))
        return made[-1]

    yield make
    for one in made:
        one.close()


def valid_signature(request: dict, secret: str = SECRET) -> bool:
    """What a receiver does (README): HMAC-SHA256 of "<timestamp>.<body>", compared in constant time."""
    timestamp = request["headers"]["X-Workflows-Timestamp"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + request["body"], hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(timestamp)) < 300
    return fresh and hmac.compare_digest(request["headers"]["X-Workflows-Signature"], f"sha256={expected}")


def readme_example() -> tuple:
    """README's verify() and example payload: what receivers copy must keep working."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = re.search(r"```python\n(import hashlib.*?def verify.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)
    body = re.search(r"X-Workflows-Signature: .*?\n\n(\{.*?\})\n```", text, re.S).group(1)
    return namespace["verify"], json.loads(body)


def subscribe(url: str, events: list[str], **fields) -> WebhookSubscription:
    return subscriptions.create_subscription(url=url, events=events, secret=SECRET, **fields)


# --- the outbox -----------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_finished_batch_writes_one_delivery_per_matching_active_subscription(synced):
    wanted = subscribe("http://127.0.0.1:9/a", ["batch.finished"])
    subscribe("http://127.0.0.1:9/b", ["batch.finished"], active=False)
    subscribe("http://127.0.0.1:9/c", ["rollout.halted"])
    waiting_instances(3)
    WorkflowInstance.objects.filter(pk=WorkflowInstance.objects.order_by("pk")[0].pk).update(
        context={"n": 0, "poison": True}
    )
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0")
    run_batch(batch.pk, busy_too=True)
    row = WebhookDelivery.objects.get()
    assert (row.subscription, row.event, row.state) == (wanted, "batch.finished", "pending")
    payload = row.payload
    assert payload["event"] == "batch.finished" and payload["workflow"] == "toy"
    assert payload["batch"]["id"] == batch.pk and payload["batch"]["state"] == "completed_with_failures"
    assert (payload["batch"]["succeeded"], payload["batch"]["failed"]) == (2, 1)
    assert payload["details"] == {"succeeded": 2, "failed": 1, "skipped": 0, "conflicts": 0}
    assert row.audit_event.action == "batch.finished"
    purge_broker()


@pytest.mark.django_db
def test_an_action_that_rolls_back_leaves_no_delivery(synced):
    subscribe("http://127.0.0.1:9/a", ["version.drained"])
    v1 = WorkflowVersion.objects.get(workflow__name="research-agent", version="1.0.0")
    with pytest.raises(RuntimeError), transaction.atomic():
        lifecycle.drain(v1)
        assert WebhookDelivery.objects.count() == 1  # written with the action
        raise RuntimeError("the caller's transaction fails after the drain")
    assert not WebhookDelivery.objects.exists()
    lifecycle.drain(v1)
    assert WebhookDelivery.objects.get().payload["version"] == "1.0.0"
    purge_broker()


@pytest.mark.django_db
def test_parking_notifies_once_per_version_not_once_per_instance(synced, settings):
    settings.WORKFLOWS_STEP_CHAIN_SECONDS = 0
    subscribe("http://127.0.0.1:9/a", ["instances.parked"])
    first = start_workflow("toy", {"n": 0}, version="1.0.0")
    second = start_workflow("toy", {"n": 1}, version="1.0.0")
    get_registry().unregister("toy")
    try:
        assert run_step(first.pk, 1) == "parked"
        assert run_step(second.pk, 1) == "parked"
    finally:
        get_registry().register(workflows_for_tests.toy)
    row = WebhookDelivery.objects.get()
    assert row.event == "instances.parked" and row.payload["version"] == "1.0.0"
    assert "no code for toy 1.0.0" in row.payload["message"]
    purge_broker()


@pytest.mark.django_db
def test_the_cleanup_notifies_how_many_it_expired(synced):
    subscribe("http://127.0.0.1:9/a", ["cleanup.expired"])
    Workflow.objects.filter(name="toy").update(max_lifetime=timedelta(days=1), stale_policy="expire")
    waiting_instances(4)
    WorkflowInstance.objects.update(created_at=timezone.now() - timedelta(days=2))
    assert run_cleanup().expired == 4
    row = WebhookDelivery.objects.get()
    assert row.event == "cleanup.expired" and row.payload["details"]["expired"] == 4
    assert AuditEvent.objects.filter(action="instance.expired").count() == 4  # each instance keeps its own
    purge_broker()


@pytest.mark.django_db
def test_subscriptions_refuse_bad_urls_events_and_secrets(db):
    for fields, field in (
        ({"url": "ftp://x/", "events": ["batch.finished"]}, "url"),
        ({"url": "not a url", "events": ["batch.finished"]}, "url"),
        ({"url": "http://x.example/", "events": []}, "events"),
        ({"url": "http://x.example/", "events": ["batch.exploded"]}, "events"),
        ({"url": "http://x.example/", "events": ["batch.finished"], "secret": "short"}, "secret"),
    ):
        with pytest.raises(InvalidInput) as refused:
            subscriptions.create_subscription(**fields)
        assert refused.value.field == field
    assert not WebhookSubscription.objects.exists()
    made = subscriptions.create_subscription(url="http://x.example/", events=["batch.finished"])
    assert len(made.secret) >= 32  # made when not given


# --- delivery -------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_slow_receiver_times_out_is_recorded_and_retried_later_and_never_slows_the_action(synced, receiver, settings):
    settings.WORKFLOWS_WEBHOOK_TIMEOUT_SECONDS = 0.5
    slow = receiver(delay=3)
    subscribe(slow.url, ["version.drained"])
    started = time.monotonic()
    lifecycle.drain(WorkflowVersion.objects.get(workflow__name="research-agent", version="1.0.0"))
    assert time.monotonic() - started < 1  # the action only wrote the outbox row
    row = WebhookDelivery.objects.get()
    assert delivery.deliver(row.pk) == "retrying"
    row.refresh_from_db()
    assert (row.state, row.attempts, row.last_status_code) == ("pending", 1, None)
    assert "timed out" in row.last_error and row.next_attempt_at > timezone.now()
    assert delivery.deliver(row.pk) == "not due"  # the retry waits for its backoff
    purge_broker()


@pytest.mark.django_db
def test_a_receiver_failing_every_time_is_given_up_after_the_last_attempt(synced, receiver, settings):
    settings.WORKFLOWS_WEBHOOK_MAX_ATTEMPTS = 2
    failing = receiver(statuses=[500, 503])
    subscribe(failing.url, ["version.drained"])
    lifecycle.drain(WorkflowVersion.objects.get(workflow__name="research-agent", version="1.0.0"))
    row = WebhookDelivery.objects.get()
    assert delivery.deliver(row.pk) == "retrying"
    WebhookDelivery.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
    assert delivery.deliver(row.pk) == "failed"
    row.refresh_from_db()
    assert (row.state, row.attempts, row.last_status_code) == ("failed", 2, 503)
    assert all(valid_signature(request) for request in failing.requests)
    purge_broker()


@pytest.mark.django_db
def test_the_periodic_resend_takes_deliveries_whose_task_was_lost(synced):
    subscribe("http://127.0.0.1:9/a", ["version.drained"])
    lifecycle.drain(WorkflowVersion.objects.get(workflow__name="research-agent", version="1.0.0"))
    assert delivery.resend_due() == 0  # just written: its own task is on the way
    WebhookDelivery.objects.update(next_attempt_at=timezone.now() - timedelta(minutes=5))
    assert delivery.resend_due() == 1
    WebhookDelivery.objects.update(state="delivered")
    assert delivery.resend_due() == 0
    purge_broker()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_worker_delivers_a_finished_batch_signed_retrying_after_a_500(synced, receiver, settings):
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("worker tests need CELERY_BROKER_URL=redis://...")
    hook = receiver(statuses=[500])
    subscribe(hook.url, ["batch.finished"])
    waiting_instances(3)
    purge_broker()
    worker = WorkerProcess(extra_env={"WORKFLOWS_WEBHOOK_RETRY_SECONDS": "0.5"}).start()
    try:
        batch = batches.start_migration("toy", source="1.0.0", target="2.0.0")
        wait_until(lambda: WebhookDelivery.objects.filter(state="delivered").exists(), timeout=60)
    finally:
        worker.stop()
        purge_broker()
    row = WebhookDelivery.objects.get()
    assert (row.attempts, row.last_status_code, row.last_error) == (2, 200, "")
    assert row.delivered_at is not None
    assert len(hook.requests) == 2 and all(valid_signature(request) for request in hook.requests)
    assert {r["headers"]["X-Workflows-Delivery"] for r in hook.requests} == {str(row.pk)}
    body = json.loads(hook.requests[-1]["body"])
    assert body["event"] == "batch.finished" and body["batch"]["id"] == batch.pk
    assert body["batch"]["succeeded"] == 3 and body["batch"]["state"] == "completed"
    assert not valid_signature(hook.requests[-1], secret="another-secret-entirely")
    verify, example = readme_example()
    assert all(verify(SECRET, r["headers"], r["body"]) for r in hook.requests)
    assert not verify("another-secret-entirely", hook.requests[-1]["headers"], hook.requests[-1]["body"])
    assert set(example) == set(body) and set(example["batch"]) == set(body["batch"])
