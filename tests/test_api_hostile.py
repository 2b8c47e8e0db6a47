"""Hostile requests through the API (as tests/test_hostile_requests.py does for the dashboard and the CLI): every
refusal is a 4xx problem+json naming the field, never a 500, and changes nothing in the database."""

import json
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import User
from django.test import Client
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from workflows_admin.api import tokens
from workflows_admin.workflows.models import WorkflowInstance
from workflows_admin.workflows.services import batches, rollouts

from .helpers import run_batch, waiting_instances
from .test_hostile_requests import (
    GATE,
    INT_COLUMN_MAX,
    bad_gates,
    bad_moments,
    bad_status_lists,
    bad_targets,
    database_checksum,
    hostile_text,
    unstorable_payloads,
)
from .worker import purge_broker

pytestmark = pytest.mark.django_db
FUZZ = settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
V = "/api/v1/workflows/toy/versions/1.0.0"
BIGINT_MAX = 2**63 - 1

# Text a client can send and no database can hold (a long digit string is storable inside a context:
# it is only hostile where a name or a number is expected, so it is added there).
unstorable_text = st.sampled_from(["\x00", "a\x00b", "\ud800", "x\udfffy"])
too_long_text = st.just("9" * 5000)
# What a URL can carry (the test client cannot percent-encode a lone surrogate in a query).
url_text = hostile_text | st.sampled_from(["\x00", "a\x00b", "9" * 5000])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | st.floats() | hostile_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=6,
)
not_an_int = json_values.filter(lambda v: not isinstance(v, int) or isinstance(v, bool))


def out_of(low: int, high: int):
    return st.integers(min_value=-(2**80), max_value=2**80).filter(lambda n: not low <= n <= high) | not_an_int


@pytest.fixture
def api(synced):
    """A superuser's token (so a refusal is about the input, never a permission) and a scene like the dashboard's."""
    waiting_instances(6)
    ids = list(WorkflowInstance.objects.order_by("pk").values_list("pk", flat=True))
    finished = batches.start_migration("toy", source="1.0.0", target="2.0.0", selection={"ids": ids[:2]})
    run_batch(finished.pk)
    running = batches.start_migration("toy", source="1.0.0", target="2.0.0", selection={"ids": ids[2:4]})
    draft = batches.preview_migration("toy", source="1.0.0", target="2.0.0", selection={"ids": ids[4:5]}, freeze=True)
    rollout = rollouts.start_rollout("research-agent", "2.0.0", strategy="linear", gates=GATE)
    user = User.objects.create_superuser("root", "r@example.com", "pw-root-1")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {tokens.create_token(user)[1]}")
    yield SimpleNamespace(
        client=client,
        finished=finished.pk,
        running=running.pk,
        draft=draft.selection_token,
        rollout=rollout.pk,
        waiting=ids[5],
    )
    purge_broker()


def post(client, path: str, body) -> object:
    raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(path, raw, content_type="application/json")


def refused(client, path: str, body, *fields: str, method: str = "post") -> dict:
    """A 4xx problem naming one of `fields` (or a field inside one), and nothing written."""
    before = database_checksum()
    response = post(client, path, body) if method == "post" else client.get(path, body)
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:300])
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == response.status_code and problem["detail"]
    assert problem["field"] and any(problem["field"].split(".")[0] == f for f in fields), problem
    assert database_checksum() == before
    return problem


def one_bad(strategies: dict):
    return st.one_of(*(st.tuples(st.just(name), strategy) for name, strategy in strategies.items()))


# --- bodies ---------------------------------------------------------------------------------------------
@FUZZ
@given(
    bad=one_bad(
        {
            "target": bad_targets | not_an_int.filter(lambda v: not isinstance(v, str)),
            # null and "" mean "not given" (every in-flight status), as a blank form field does.
            "statuses": bad_status_lists
            | json_values.filter(lambda v: not isinstance(v, list) and v not in (None, "")),
            "started_after": bad_moments,
            "started_before": bad_moments,
            "ids": st.lists(
                st.integers(min_value=BIGINT_MAX + 1, max_value=2**90) | not_an_int, min_size=1, max_size=3
            ),
        }
    )
)
@example(bad=("target", "9" * 5000 + ".0.0"))
@example(bad=("ids", [0]))
@example(bad=("statuses", False))
@example(bad=("statuses", 0))
def test_preview_refuses_each_hostile_field(api, bad):
    name, value = bad
    body = {"target": "2.0.0", "selection": {}}
    if name == "target":
        body["target"] = value
    else:
        body["selection"][name] = value
    problem = refused(api.client, f"{V}/migrations/preview", body, name, "selection")
    assert name in problem["field"] or name in problem["detail"]


@FUZZ
@given(
    bad=one_bad(
        {
            "selection_token": hostile_text | st.integers().map(str) | not_an_int,
            "not_before": bad_moments | not_an_int.filter(lambda v: not isinstance(v, str) and v is not None),
            "rate_limit": out_of(1, INT_COLUMN_MAX).filter(lambda v: v is not None),
            "canary_size": out_of(1, INT_COLUMN_MAX).filter(lambda v: v is not None),
            "chunk_size": out_of(1, batches.MAX_CHUNK),
            "on_max_wait": hostile_text.filter(lambda t: t not in ("", "skip", "interrupt")),
        }
    )
)
@example(bad=("selection_token", "1" * 5000))
@example(bad=("selection_token", ""))
def test_confirm_refuses_each_hostile_field(api, bad):
    name, value = bad
    body = {"target": "2.0.0", "selection_token": api.draft, "pacing": {}}
    if name in ("selection_token", "chunk_size"):
        body[name] = value
    else:
        body["pacing"][name] = value
        if name == "on_max_wait":
            body["pacing"]["max_wait"] = 5
    refused(api.client, f"{V}/migrations", body, name, "pacing", "max_wait")


@FUZZ
@given(percent=out_of(0, 100))
@example(percent=True)
@example(percent="50")
def test_ramp_refuses_bad_percents(api, percent):
    refused(api.client, f"{V}/ramp", {"percent": percent}, "percent")


@FUZZ
@given(
    bad=one_bad(
        {
            "strategy": hostile_text.filter(lambda t: t not in ("linear", "canary", "all_at_once")),
            "gates": st.lists(bad_gates, min_size=1, max_size=2) | not_an_int.filter(lambda v: v != []),
            "step_percent": out_of(1, 99),
            "interval_seconds": out_of(1, INT_COLUMN_MAX),
            "on_breach": hostile_text.filter(lambda t: t not in ("keep", "park", "migrate_back")),
            "workflow": hostile_text.filter(lambda t: t != "toy") | not_an_int.filter(lambda v: not isinstance(v, str)),
        }
    )
)
def test_rollout_start_refuses_each_hostile_field(api, bad):
    name, value = bad
    body = {"workflow": "toy", "version": "1.0.0", "gates": [GATE], name: value}
    refused(api.client, "/api/v1/rollouts", body, name)


contexts = unstorable_payloads.map(lambda text: ("raw", text)) | st.builds(
    lambda key, value, depth: ("json", {"n": 1, "label": "x", "nested": [{key: value}] * depth}),
    st.just("k") | unstorable_text,
    unstorable_text,
    st.integers(min_value=1, max_value=3),
)


def _start_body(kind_and_value, *, bulk: bool):
    kind, value = kind_and_value
    inner = value if kind == "raw" else json.dumps(value)  # raw: the context as text the client wrote
    return '{"workflow": "toy", "' + ('contexts": [' if bulk else 'context": ') + inner + ("]}" if bulk else "}")


@FUZZ
@given(context=contexts, bulk=st.booleans())
@example(context=("raw", '{"n": 1, "label": "\\ud800"}'), bulk=False)
@example(context=("raw", '{"n": 1, "label": "x", "\\udfff": 1}'), bulk=True)
@example(context=("raw", '{"n": 1, "label": "a\\u0000b"}'), bulk=False)
def test_starting_instances_refuses_unstorable_contexts(api, context, bulk):
    body = _start_body(context, bulk=bulk)
    path = "/api/v1/instances/bulk" if bulk else "/api/v1/instances"
    refused(api.client, path, body, "context", "contexts", "body")


def test_a_long_digit_string_inside_a_context_is_stored_as_it_was_sent(api):
    context = {"n": 1, "label": "x", "nested": [{"k": "9" * 5000}]}
    response = post(api.client, "/api/v1/instances", {"workflow": "toy", "context": context})
    assert response.status_code == 201, response.content
    assert WorkflowInstance.objects.get(pk=response.json()["id"]).context == context


@FUZZ
@given(
    start_key=unstorable_text
    | too_long_text
    | st.text(min_size=201, max_size=210)
    | not_an_int.filter(lambda v: v is not None)
)
def test_starting_instances_refuses_bad_start_keys(api, start_key):
    body = {"workflow": "toy", "context": {"n": 1, "label": "x"}, "start_key": start_key}
    refused(api.client, "/api/v1/instances", body, "start_key")


@FUZZ
@given(payload=unstorable_payloads)
@example(payload='{"x": "\\ud800"}')
def test_signals_refuse_unstorable_payloads(api, payload):
    body = '{"payload": ' + payload + "}"
    refused(api.client, f"/api/v1/instances/{api.waiting}/signal", body, "payload", "body")


@FUZZ
@given(raw=st.binary(max_size=40) | st.text(max_size=40).map(str.encode))
@example(raw=b"\xff\xfe")
@example(raw=b"[" * 5000)
def test_bodies_that_are_not_the_expected_json_object_are_400(api, raw):
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict) and {"target"} <= set(parsed):
        return  # a real request; other tests cover its fields
    before = database_checksum()
    response = api.client.post(f"{V}/migrations/preview", raw, content_type="application/json")
    assert response.status_code == 400 and response["Content-Type"] == "application/problem+json"
    assert response.json()["field"]
    assert database_checksum() == before


# --- paths and queries ----------------------------------------------------------------------------------
forged_ids = st.integers(min_value=BIGINT_MAX + 1, max_value=2**200).map(str) | st.sampled_from(
    ["0", "-1", "1e3", "abc", "%00", "%F0%9F%98%80", "9" * 5000, "0x10"]
)


@FUZZ
@given(pk=forged_ids, kind=st.sampled_from(["batches", "rollouts", "instances", "webhooks"]))
def test_forged_ids_in_paths_are_4xx(api, pk, kind):
    response = api.client.get(f"/api/v1/{kind}/{pk}")
    assert 400 <= response.status_code < 500, response.content[:200]
    assert response["Content-Type"] == "application/problem+json"
    response = api.client.post(f"/api/v1/{kind}/{pk}/cancel", "{}", content_type="application/json")
    assert 400 <= response.status_code < 500


@FUZZ
@given(
    path=st.sampled_from(["/api/v1/instances", "/api/v1/batches", "/api/v1/rollouts", "/api/v1/audit-events"]),
    query=st.dictionaries(
        st.sampled_from(
            [
                "workflow",
                "version",
                "status",
                "state",
                "kind",
                "started_after",
                "since",
                "until",
                "action",
                "actor",
                "instance",
                "batch",
                "cursor",
                "limit",
            ]
        ),
        url_text,
        min_size=1,
        max_size=3,
    ),
)
@example(path="/api/v1/audit-events", query={"actor": "\x00"})
@example(path="/api/v1/instances", query={"started_after": "9999-12-31T23:59:59-23:59"})
def test_list_filters_never_crash(api, path, query):
    response = api.client.get(path, query)
    assert response.status_code in (200, 400), (response.status_code, response.content[:300])
    if response.status_code == 400:
        assert response.json()["field"]


@FUZZ
@given(workflow=hostile_text | unstorable_text | too_long_text, version=hostile_text | unstorable_text | too_long_text)
def test_workflow_and_version_in_paths_never_crash(api, workflow, version):
    from urllib.parse import quote

    where = f"/api/v1/workflows/{quote(workflow, safe='', errors='surrogatepass')}/versions/"
    where += quote(version, safe="", errors="surrogatepass")
    response = api.client.get(where)
    assert response.status_code in (200, 400, 404), response.content[:300]
    response = post(api.client, f"{where}/drain", {})
    assert 400 <= response.status_code < 500 or response.status_code == 200
