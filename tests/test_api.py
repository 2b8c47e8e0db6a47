"""The HTTP API: schema, tokens, the permission matrix of every endpoint, a pipeline step, idempotent POSTs."""

import json
import threading
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.db import connection
from django.test import Client
from openapi_spec_validator import validate

from workflows_admin.api import tokens
from workflows_admin.api.models import ApiToken, IdempotencyRecord
from workflows_admin.api.urls import api
from workflows_admin.webhooks.models import WebhookSubscription
from workflows_admin.workflows import permissions
from workflows_admin.workflows.models import AuditEvent, MigrationBatch, WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.services import batches, rollouts

from .helpers import run_batch, waiting_instances
from .worker import purge_broker

pytestmark = pytest.mark.django_db
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
GATE = "step_failure_rate<=0.05:min=20"
ALL_PERMISSIONS = (
    permissions.VIEW,
    permissions.MIGRATE,
    permissions.ROLLBACK,
    permissions.LIFECYCLE,
    permissions.OPERATE,
    permissions.ROLLOUTS,
    permissions.VIEW_WEBHOOKS,
    permissions.ADD_WEBHOOKS,
    permissions.CHANGE_WEBHOOKS,
    permissions.DELETE_WEBHOOKS,
)


def user_with(name: str, *permissions: str) -> User:
    user = User.objects.create_user(name, password="pw-unused-1")
    for permission in permissions:
        app_label, codename = permission.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


def api_client(user: User) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {tokens.create_token(user)[1]}")


def send(client: Client, method: str, path: str, body=None, **headers):
    if method == "get":
        return client.get(path, **headers)
    data = json.dumps(body) if body is not None else ""
    return getattr(client, method)(path, data, content_type="application/json", **headers)


def assert_problem(response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["title"] and problem["detail"] and problem["type"]
    if field is not None:
        assert problem["field"] == field, problem
    return problem


# --- the schema -----------------------------------------------------------------------------------------
def test_the_served_schema_is_valid_openapi_3_1_and_equals_the_committed_one(client):
    served = client.get("/api/v1/openapi.json").json()
    assert served["openapi"].startswith("3.1")
    validate(served)
    committed = json.loads(SCHEMA_FILE.read_text())
    assert served == committed, (
        "docs/openapi.json is out of date: python manage.py export_openapi_schema "
        "--api workflows_admin.api.urls.api --indent 2 > docs/openapi.json"
    )


def test_the_interactive_docs_are_served(client):
    response = client.get("/api/v1/docs")
    assert response.status_code == 200 and b"swagger" in response.content.lower()


def test_every_post_documents_the_idempotency_key():
    schema = api.get_openapi_schema()
    posts = [methods["post"] for methods in schema["paths"].values() if "post" in methods]
    assert posts and all(any(p["name"] == "Idempotency-Key" for p in post["parameters"]) for post in posts)


# --- tokens ---------------------------------------------------------------------------------------------
def test_token_create_prints_the_token_last_and_keeps_only_its_hash(db):
    User.objects.create_user("deployer")
    out = StringIO()
    call_command("workflows", "token", "create", "deployer", "--name", "ci", stdout=out)
    token = out.getvalue().strip().split()[-1]
    assert token.startswith("wa_") and len(token) > 40
    row = ApiToken.objects.get()
    assert row.digest == tokens.digest(token) and row.name == "ci"
    with connection.cursor() as cursor:  # nowhere in the table
        cursor.execute(
            "SELECT count(*) FROM api_apitoken WHERE row_to_json(api_apitoken)::text LIKE %s", [f"%{token}%"]
        )
        assert cursor.fetchone()[0] == 0
    assert tokens.user_for(token).username == "deployer"
    call_command("workflows", "token", "revoke", str(row.pk), stdout=StringIO())
    assert tokens.user_for(token) is None
    assert list(AuditEvent.objects.filter(action__startswith="api.").values_list("action", flat=True)) == [
        "api.token_revoked",
        "api.token_created",
    ]


def test_anonymous_bad_revoked_and_inactive_tokens_get_401(db):
    user = user_with("viewer", permissions.VIEW)
    row, token = tokens.create_token(user)
    assert Client(HTTP_AUTHORIZATION=f"Bearer {token}").get("/api/v1/batches").status_code == 200
    for header in ({}, {"HTTP_AUTHORIZATION": "Bearer wa_forged"}, {"HTTP_AUTHORIZATION": f"Basic {token}"}):
        response = Client(**header).get("/api/v1/batches")
        assert_problem(response, 401, "Authorization")
        assert response["WWW-Authenticate"].startswith("Bearer")
    tokens.revoke_token(row.pk)
    assert_problem(Client(HTTP_AUTHORIZATION=f"Bearer {token}").get("/api/v1/batches"), 401)
    _, token = tokens.create_token(user)
    User.objects.filter(pk=user.pk).update(is_active=False)
    assert_problem(Client(HTTP_AUTHORIZATION=f"Bearer {token}").get("/api/v1/batches"), 401)


def test_the_cli_refuses_tokens_for_unknown_users(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match=r"no user 'ghost' \[user\]"):
        call_command("workflows", "token", "create", "ghost", stdout=StringIO())


# --- the permission matrix ------------------------------------------------------------------------------
@pytest.fixture
def scene(synced):
    """Toy: waiting instances on 1.0.0, a finished migration (with a failure), a running one and a preview;
    research-agent: a running rollout; one webhook subscription."""
    waiting_instances(8)
    ids = list(WorkflowInstance.objects.order_by("pk").values_list("pk", flat=True))
    WorkflowInstance.objects.filter(pk=ids[1]).update(context={"n": 1, "poison": True})
    finished = batches.start_migration("toy", source="1.0.0", target="2.0.0", selection={"ids": ids[:2]})
    run_batch(finished.pk)
    running = batches.start_migration("toy", source="1.0.0", target="2.0.0", selection={"ids": ids[2:4]})
    draft = batches.preview_migration("toy", source="1.0.0", target="2.0.0", selection={"ids": ids[4:6]}, freeze=True)
    rollout = rollouts.start_rollout("research-agent", "2.0.0", strategy="linear", gates=GATE)
    subscription = WebhookSubscription.objects.create(url="http://127.0.0.1:9/", events=["batch.finished"], secret="s")
    yield SimpleNamespace(
        finished=finished.pk,
        running=running.pk,
        draft=draft.selection_token,
        rollout=rollout.pk,
        waiting=ids[6],
        subscription=subscription.pk,
    )
    purge_broker()


V = "/api/v1/workflows/toy/versions"


def endpoints(s) -> list[tuple]:
    """(method, path, permission, body, set-up): every operation of the API, each with a request its
    permission lets through."""
    pause_batch = lambda: batches.pause_batch(s.running)  # noqa: E731
    pause_rollout = lambda: rollouts.pause_rollout(s.rollout)  # noqa: E731
    flag_shape = lambda: WorkflowVersion.objects.filter(workflow__name="toy", version="1.0.0").update(  # noqa: E731
        shape_change={"changes": [{"detail": "step 'third' added"}], "in_flight": 8}
    )
    return [
        ("get", "/api/v1/workflows", permissions.VIEW, None, None),
        ("get", "/api/v1/workflows/toy", permissions.VIEW, None, None),
        ("get", f"{V}/1.0.0", permissions.VIEW, None, None),
        ("post", f"{V}/1.0.0/make-current", permissions.LIFECYCLE, None, None),
        ("post", f"{V}/1.0.0/drain", permissions.LIFECYCLE, None, None),
        ("post", "/api/v1/workflows/research-agent/versions/1.0.0/retire", permissions.LIFECYCLE, None, None),
        ("post", f"{V}/1.0.0/ramp", permissions.LIFECYCLE, {"percent": 10}, None),
        ("post", f"{V}/1.0.0/migrations/preview", permissions.MIGRATE, {"target": "2.0.0"}, None),
        ("post", f"{V}/1.0.0/migrations", permissions.MIGRATE, {"target": "2.0.0", "selection_token": s.draft}, None),
        ("get", f"{V}/1.0.0/diff?to=2.0.0", permissions.VIEW, None, None),
        ("get", f"{V}/2.0.0/verification?sample=20", permissions.VIEW, None, None),
        ("post", f"{V}/1.0.0/acknowledge-shape", permissions.LIFECYCLE, {"reason": "appended a step"}, flag_shape),
        ("get", "/api/v1/batches", permissions.VIEW, None, None),
        ("get", f"/api/v1/batches/{s.finished}", permissions.VIEW, None, None),
        ("post", f"/api/v1/batches/{s.running}/pause", permissions.MIGRATE, None, None),
        ("post", f"/api/v1/batches/{s.running}/resume", permissions.MIGRATE, None, pause_batch),
        ("post", f"/api/v1/batches/{s.running}/cancel", permissions.MIGRATE, None, None),
        ("post", f"/api/v1/batches/{s.finished}/retry", permissions.MIGRATE, None, None),
        ("post", f"/api/v1/batches/{s.finished}/rollback", permissions.ROLLBACK, {"force": False}, None),
        ("get", "/api/v1/rollouts", permissions.VIEW, None, None),
        (
            "post",
            "/api/v1/rollouts",
            permissions.ROLLOUTS,
            {"workflow": "toy", "version": "1.0.0", "gates": [GATE]},
            None,
        ),
        ("get", f"/api/v1/rollouts/{s.rollout}", permissions.VIEW, None, None),
        ("post", f"/api/v1/rollouts/{s.rollout}/pause", permissions.ROLLOUTS, None, None),
        ("post", f"/api/v1/rollouts/{s.rollout}/resume", permissions.ROLLOUTS, None, pause_rollout),
        ("post", f"/api/v1/rollouts/{s.rollout}/abort", permissions.ROLLOUTS, None, None),
        ("post", f"/api/v1/rollouts/{s.rollout}/promote", permissions.ROLLOUTS, None, None),
        (
            "post",
            "/api/v1/instances",
            permissions.OPERATE,
            {"workflow": "toy", "context": {"n": 1, "label": "a"}},
            None,
        ),
        (
            "post",
            "/api/v1/instances/bulk",
            permissions.OPERATE,
            {"workflow": "toy", "contexts": [{"n": 1, "label": "a"}, {"n": 2, "label": "b"}]},
            None,
        ),
        ("get", "/api/v1/instances?workflow=toy&status=waiting", permissions.VIEW, None, None),
        ("get", f"/api/v1/instances/{s.waiting}", permissions.VIEW, None, None),
        ("post", f"/api/v1/instances/{s.waiting}/signal", permissions.OPERATE, {"payload": {"ok": True}}, None),
        ("post", f"/api/v1/instances/{s.waiting}/cancel", permissions.OPERATE, None, None),
        ("get", "/api/v1/audit-events?action=batch.", permissions.VIEW, None, None),
        ("get", "/api/v1/webhooks", permissions.VIEW_WEBHOOKS, None, None),
        (
            "post",
            "/api/v1/webhooks",
            permissions.ADD_WEBHOOKS,
            {"url": "https://ci.example/h", "events": ["batch.finished"]},
            None,
        ),
        ("get", f"/api/v1/webhooks/{s.subscription}", permissions.VIEW_WEBHOOKS, None, None),
        ("patch", f"/api/v1/webhooks/{s.subscription}", permissions.CHANGE_WEBHOOKS, {"active": False}, None),
        ("delete", f"/api/v1/webhooks/{s.subscription}", permissions.DELETE_WEBHOOKS, None, None),
        ("get", f"/api/v1/webhooks/{s.subscription}/deliveries", permissions.VIEW_WEBHOOKS, None, None),
    ]


def template_of(path: str) -> str:
    """/api/v1/batches/12/pause?x=1 -> /api/v1/batches/{batch_id}/pause, as the schema names it."""
    names = {"batches": "batch_id", "rollouts": "rollout_id", "instances": "instance_id", "webhooks": "subscription_id"}
    parts = path.split("?")[0].split("/")
    out = []
    for i, part in enumerate(parts):
        if part.isdigit():
            part = "{" + names[parts[i - 1]] + "}"
        out.append(part)
    path = "/".join(out)
    return (
        path.replace("/workflows/toy", "/workflows/{workflow}")
        .replace("/workflows/research-agent", "/workflows/{workflow}")
        .replace("/versions/1.0.0", "/versions/{version}")
        .replace("/versions/2.0.0", "/versions/{version}")
    )


def test_the_matrix_covers_every_operation_of_the_schema(scene):
    schema = api.get_openapi_schema()
    operations = {(method, path) for path, methods in schema["paths"].items() for method in methods}
    assert {(method, template_of(path)) for method, path, *_ in endpoints(scene)} == operations


@pytest.mark.parametrize("index", range(39))
def test_each_endpoint_needs_a_token_and_its_permission(scene, index):
    method, path, permission, body, set_up = endpoints(scene)[index]
    if set_up:
        set_up()
    assert_problem(send(Client(), method, path, body), 401, "Authorization")
    others = [p for p in ALL_PERMISSIONS if p != permission]
    refused = send(api_client(user_with("others", *others)), method, path, body)
    assert permission in assert_problem(refused, 403)["detail"]
    allowed = send(api_client(user_with("allowed", permission)), method, path, body)
    assert 200 <= allowed.status_code < 300, allowed.content
    if method != "get" and not path.endswith("/preview"):  # the action is audited with the token's user
        assert AuditEvent.objects.filter(actor_label="allowed").exists()


def test_every_endpoint_is_in_the_matrix(scene):
    assert len(endpoints(scene)) == 39


# --- a pipeline step ------------------------------------------------------------------------------------
def test_a_pipeline_previews_confirms_and_follows_the_batch(synced):
    waiting_instances(5)
    client = api_client(user_with("pipeline", permissions.VIEW, permissions.MIGRATE))
    preview = send(client, "post", f"{V}/1.0.0/migrations/preview", {"target": "2.0.0", "selection": {}})
    assert preview.status_code == 200, preview.content
    body = preview.json()
    assert body["selected"] == 5 and body["report"]["would_migrate"] == 5
    confirmed = send(
        client,
        "post",
        f"{V}/1.0.0/migrations",
        {"target": "2.0.0", "selection_token": body["selection_token"], "pacing": {"rate_limit": 1000}},
    )
    assert confirmed.status_code == 201, confirmed.content
    batch = confirmed.json()
    assert batch["state"] == "running" and batch["total"] == 5 and batch["started_by"] == "pipeline"
    run_batch(batch["id"], busy_too=True)
    done = client.get(f"/api/v1/batches/{batch['id']}").json()
    assert (done["state"], done["succeeded"], done["finished"]) == ("completed", 5, True)
    assert "T" in done["finished_at"]  # ISO dates
    again = send(
        client, "post", f"{V}/1.0.0/migrations", {"target": "2.0.0", "selection_token": body["selection_token"]}
    )
    assert_problem(again, 409, "selection_token")
    purge_broker()


def test_a_pipeline_reads_the_diff_and_the_verification_before_it_moves_anything(synced):
    waiting_instances(4)
    client = api_client(user_with("pipeline", permissions.VIEW))
    diff = client.get(f"{V}/1.0.0/diff", {"to": "2.0.0"})
    assert diff.status_code == 200, diff.content
    body = diff.json()
    assert (body["source"], body["target"], body["paths"]["forward"]) == ("1.0.0", "2.0.0", ["1.0.0", "2.0.0"])
    assert body["classification"] in ("compatible", "additive", "breaking") and body["changes"]
    assert any(change["subject"] == "middle" for change in body["changes"])
    assert body["in_flight"] == 4
    assert_problem(client.get(f"{V}/1.0.0/diff", {"to": "9.9.9"}), 400, "version")
    assert_problem(client.get(f"{V}/1.0.0/diff"), 400, "to")

    verified = client.get(f"{V}/2.0.0/verification", {"sample": "10", "source": ["1.0.0"]})
    assert verified.status_code == 200, verified.content
    report = verified.json()
    assert report["ok"] is True and report["checked"] == 4 and report["passed"] == 4
    WorkflowInstance.objects.filter(pk=WorkflowInstance.objects.order_by("pk")[0].pk).update(
        context={"n": 1, "poison": True}
    )
    failing = client.get(f"{V}/2.0.0/verification").json()
    assert failing["ok"] is False and failing["failed"] == 1 and failing["failures"][0]["examples"]
    assert_problem(client.get(f"{V}/2.0.0/verification", {"sample": "0x10"}), 400, "sample")
    assert_problem(client.get(f"{V}/2.0.0/verification", {"source": "2.0.0"}), 400, "from")


def test_a_preview_selects_by_step_query_and_error_and_takes_a_step_map(synced):
    waiting_instances(3)
    first = WorkflowInstance.objects.order_by("pk")[0]
    WorkflowInstance.objects.filter(pk=first.pk).update(current_step="second", context={"n": 7})
    client = api_client(user_with("pipeline", permissions.MIGRATE))
    path = f"{V}/1.0.0/migrations/preview"
    body = {"target": "2.0.0", "selection": {"step": ["second"], "where": ["n = 7"]}, "step_map": {"second": "middle"}}
    preview = send(client, "post", path, body)
    assert preview.status_code == 200, preview.content
    report = preview.json()["report"]
    assert preview.json()["selected"] == 1 and report["plan"]["step_map_override"] == {"second": "middle"}
    assert report["step_moves"] == [{"from": "second", "to": "middle", "count": 1}]
    token = preview.json()["selection_token"]
    assert MigrationBatch.objects.get(pk=token).plan["step_map_override"] == {"second": "middle"}
    refused = send(client, "post", path, {"target": "2.0.0", "step_map": {"second": "nowhere"}})
    assert_problem(refused, 400, "step_map")
    refused = send(client, "post", path, {"target": "2.0.0", "selection": {"where": ["n ~ 7"]}})
    assert_problem(refused, 400, "where")
    refused = send(client, "post", path, {"target": "2.0.0", "selection": {"error": "TIMEOUT"}})
    assert_problem(refused, 400, "selection")  # error selects failed instances: there are none


def test_confirm_without_a_selection_token_is_refused_and_migrates_nothing(synced):
    waiting_instances(3)
    client = api_client(user_with("pipeline", permissions.MIGRATE))
    for body in ({"target": "2.0.0"}, {"target": "2.0.0", "selection_token": ""}):
        assert_problem(send(client, "post", f"{V}/1.0.0/migrations", body), 400, "selection_token")
    assert not MigrationBatch.objects.exists()


def test_lists_paginate_by_cursor(synced):
    waiting_instances(7)
    client = api_client(user_with("viewer", permissions.VIEW))
    seen, cursor = [], None
    while True:
        page = client.get("/api/v1/instances", {"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(WorkflowInstance.objects.values_list("pk", flat=True), reverse=True)
    assert_problem(client.get("/api/v1/instances", {"cursor": "garbage!"}), 400, "cursor")
    assert_problem(client.get("/api/v1/instances", {"limit": 0}), 400, "limit")


# --- idempotency ----------------------------------------------------------------------------------------
def test_a_retried_post_gets_the_first_answer_and_acts_once(synced):
    waiting_instances(2)
    finished = batches.start_migration("toy", source="1.0.0", target="2.0.0")
    run_batch(finished.pk)
    client = api_client(user_with("pipeline", permissions.ROLLBACK))
    path = f"/api/v1/batches/{finished.pk}/rollback"
    first = send(client, "post", path, {"force": False}, HTTP_IDEMPOTENCY_KEY="deploy-42")
    second = send(client, "post", path, {"force": False}, HTTP_IDEMPOTENCY_KEY="deploy-42")
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json() and second["Idempotent-Replayed"] == "true"
    assert MigrationBatch.objects.filter(parent=finished).count() == 1
    other_body = send(client, "post", path, {"force": True}, HTTP_IDEMPOTENCY_KEY="deploy-42")
    assert_problem(other_body, 422, "Idempotency-Key")
    without_key = send(client, "post", path, {"force": False})
    assert_problem(without_key, 409, "batch")  # a new request: the rule refuses a second rollback
    assert_problem(send(client, "post", path, {}, HTTP_IDEMPOTENCY_KEY="\u00e9"), 400, "Idempotency-Key")
    purge_broker()


def test_a_refused_post_stores_nothing_so_its_retry_can_act(synced):
    waiting_instances(1)
    client = api_client(user_with("ops", permissions.LIFECYCLE))
    refused = send(client, "post", f"{V}/1.0.0/ramp", {"percent": 101}, HTTP_IDEMPOTENCY_KEY="k1")
    assert_problem(refused, 400, "percent")
    assert not IdempotencyRecord.objects.exists()


def _rollbacks_chosen_as_deadlock_victims(monkeypatch, times: int):
    """A finished migration of two instances whose rollback service is chosen as a deadlock victim by
    PostgreSQL itself for its first `times` calls (SQLSTATE 40P01: psycopg's DeadlockDetected, wrapped
    by Django as a real deadlock is). Returns the batch, the calls made, a client that may roll back."""
    waiting_instances(2)
    finished = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0"))
    real = batches.start_rollback
    calls = []

    def service(*args, **kwargs):
        calls.append(1)
        if len(calls) <= times:
            with connection.cursor() as cursor:
                cursor.execute("DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END $$")
        return real(*args, **kwargs)

    monkeypatch.setattr(batches, "start_rollback", service)
    return finished, calls, api_client(user_with("pipeline", permissions.ROLLBACK))


def test_a_deadlock_victim_with_a_key_is_retried_whole_and_acts_once(synced, monkeypatch):
    finished, calls, client = _rollbacks_chosen_as_deadlock_victims(monkeypatch, times=1)
    response = send(client, "post", f"/api/v1/batches/{finished.pk}/rollback", {}, HTTP_IDEMPOTENCY_KEY="dl-1")
    assert response.status_code == 201, response.content
    assert len(calls) == 2
    assert MigrationBatch.objects.filter(parent=finished).count() == 1
    assert IdempotencyRecord.objects.get(key="dl-1").status_code == 201
    purge_broker()


@pytest.mark.django_db(transaction=True)  # without a key the error aborts the request's own transaction
def test_a_deadlock_victim_that_stays_one_is_a_503_to_retry_and_changes_nothing(synced, monkeypatch):
    finished, calls, client = _rollbacks_chosen_as_deadlock_victims(monkeypatch, times=99)
    for headers in ({}, {"HTTP_IDEMPOTENCY_KEY": "dl-2"}):
        response = send(client, "post", f"/api/v1/batches/{finished.pk}/rollback", {}, **headers)
        assert_problem(response, 503, None)
        assert response["Retry-After"] == "1" and "send it again" in response.json()["detail"]
    assert len(calls) == 1 + 3  # without a key once; with one, the wrapper's three attempts
    assert not MigrationBatch.objects.filter(parent=finished).exists()
    assert not IdempotencyRecord.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_threads_with_one_key_start_one_batch_and_get_the_same_answer(synced):
    waiting_instances(10)
    finished = batches.start_migration("toy", source="1.0.0", target="2.0.0")
    run_batch(finished.pk)
    _, token = tokens.create_token(user_with("pipeline", permissions.ROLLBACK))
    barrier = threading.Barrier(2)
    responses, errors = [None, None], []

    def post(index: int) -> None:
        try:
            client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
            barrier.wait(timeout=10)
            responses[index] = send(
                client, "post", f"/api/v1/batches/{finished.pk}/rollback", {}, HTTP_IDEMPOTENCY_KEY="retry-me"
            )
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=post, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert [r.status_code for r in responses] == [201, 201], [r.content for r in responses]
    assert responses[0].json() == responses[1].json()
    assert sorted(r.get("Idempotent-Replayed", "") for r in responses) == ["", "true"]
    assert MigrationBatch.objects.filter(parent=finished).count() == 1
    assert AuditEvent.objects.filter(action="batch.rollback_started").count() == 1
    purge_broker()
