"""Hostile requests through the dashboard and the CLI: every refusal is a 4xx (or a non-zero exit) that names the
field or version at fault and changes nothing in the database; the same action sent twice at once acts once."""

import json
import math
import re
import threading
from html import unescape
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from workflows_admin.dashboard.views import BATCH_ACTIONS, ROLLOUT_ACTIONS
from workflows_admin.workflows.models import AuditEvent, MigrationBatch, Rollout, WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.services import batches, instances, rollouts
from workflows_admin.workflows.services.batches import MIGRATABLE_STATUSES
from workflows_admin.workflows.services.rollouts import METRICS

from .helpers import run_batch, waiting_instances
from .test_bad_input import bad_versions
from .test_bad_input import database_checksum as core_checksum
from .worker import purge_broker

pytestmark = pytest.mark.django_db
FUZZ = settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
INT_COLUMN_MAX = 2**31 - 1  # PostgreSQL integer: rate_limit, canary_size, interval_seconds
GATE = "step_failure_rate<=0.05:min=20"


def database_checksum() -> str:
    """test_bad_input's checksum plus the tables that batch, rollout and routing actions write."""
    tables = ["workflow", "migrationbatch", "batchitem", "rollout", "rolloutevent"]
    with connection.cursor() as cursor:
        parts = [core_checksum()]
        for table in (f"workflows_{name}" for name in tables):
            cursor.execute(f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t.id), '')) FROM {table} t")
            parts.append(cursor.fetchone()[0])
    return ":".join(parts)


# --- what counts as hostile -------------------------------------------------------------------------------
def as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def is_moment(text: str) -> bool:
    """A date-time that exists and that UTC (and so PostgreSQL) can hold."""
    try:
        moment = parse_datetime(text)
        if moment is not None and timezone.is_aware(moment):
            moment.astimezone(timezone.UTC)  # OverflowError past year 9999 or before year 1
        return moment is not None
    except (ValueError, OverflowError):
        return False


def has_a_non_number(ids: str) -> bool:
    """A comma-separated id list with a part that int() cannot read: refused before any lookup."""
    return any(as_int(part.strip()) is None for part in ids.split(",") if part.strip())


def is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


nul_text = st.builds("{}\x00{}".format, st.text(max_size=4), st.text(max_size=4))
# Numerals str.isdigit()/isnumeric() accept and int() refuses, and more digits than int() converts.
digit_traps = st.sampled_from(["²", "½", "Ⅻ", "9" * 5000, "1" + "0" * 4300])
hostile_text = st.text(max_size=20) | nul_text | digit_traps


def not_a_whole_number(low: int, high: int, *, blank_is_default: bool = False):
    """Text that does not read as a whole number from low to high (even with int()'s leniency)."""
    texts = hostile_text | st.integers(min_value=-(2**70), max_value=2**70).map(str)
    texts = texts.filter(lambda t: as_int(t) is None or not low <= as_int(t) <= high)
    return texts.filter(str.strip) if blank_is_default else texts


bad_moments = (
    st.text(min_size=1, max_size=30).filter(lambda t: not is_moment(t))
    | nul_text
    | st.sampled_from(
        [
            "2026-02-30T00:00:00",  # well-formed, no such day
            "2026-01-01T00:00:00+99:00",  # an offset no timezone has
            "9999-12-31T23:59:59-23:59",  # past year 9999 in UTC
            "0001-01-01T00:00:00+23:59",  # before year 1 in UTC
        ]
    )
)
unknown_versions = st.sampled_from(["9.9.9", "2.0.0-rc.1", "2.1.0", "0.0.0"])
bad_targets = bad_versions | unknown_versions | st.just("1.0.0")  # 1.0.0 is the source: no path
bad_status_lists = st.lists(hostile_text, min_size=1, max_size=3).filter(
    lambda statuses: not set(statuses) <= set(MIGRATABLE_STATUSES)
)
forged_instance_ids = st.lists(st.integers(min_value=10**9, max_value=2**80), min_size=1, max_size=3).map(
    lambda ids: ",".join(map(str, ids))
)
bad_ids = forged_instance_ids | st.text(min_size=1, max_size=12).filter(has_a_non_number)
# The dashboard asks for a percentage; 0-100 with a margin for the division by 100.
bad_failure_percent = (
    st.floats().filter(lambda f: not -1 <= f <= 101).map(str)
    | hostile_text.filter(lambda t: as_float(t) is None)
    | st.sampled_from(["nan", "inf", "-inf"])
).filter(bool)  # blank: no threshold, the canary pauses for review
bad_thresholds = st.sampled_from(["nan", "inf", "1e999", "-0.5", "", "abc"]) | hostile_text.filter(
    lambda t: "," not in t and ":min=" not in t and (as_float(t) is None or not 0 <= as_float(t) < math.inf)
)
bad_gates = (
    hostile_text.filter(lambda t: "<=" not in t)
    | st.builds("{}<={}".format, st.sampled_from(METRICS), bad_thresholds)
    | st.builds("{}<=0.05".format, hostile_text.filter(lambda m: m.strip() not in METRICS and "," not in m))
    | st.builds("step_failure_rate<=0.05:min={}".format, not_a_whole_number(1, 2**70).filter(lambda t: "," not in t))
)
unstorable_payloads = st.one_of(
    hostile_text.filter(lambda t: t and not is_json_object(t)),
    st.lists(st.integers() | st.text(max_size=5), max_size=3).map(json.dumps),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2).map(lambda d: json.dumps({**d, "x": "\x00"})),
    st.sampled_from(
        [
            "[" * 5000 + "]" * 5000,  # nested deeper than the parser's recursion
            '{"n": ' + "1" * 5000 + "}",  # more digits than int() converts
            '{"n": NaN}',
            '{"ok": "raw \x00 inside"}',
            json.dumps({"blob": "x" * (1024 * 1024)}),  # over WORKFLOWS_MAX_CONTEXT_BYTES
            '{"deep": ' + "[" * 150 + "]" * 150 + "}",  # parses, but deeper than a context may nest
            '{"deep": ' + "[" * 990 + "]" * 990 + "}",  # parses, then any recursive walk over it overflows
            '{"note": "\\ud800"}',  # a lone surrogate, as JSON writes it: parses, and no UTF-8 holds it
            '{"\\udfff": 1}',  # ... as a key
            '{"a": [{"b": "x\\udc00y"}]}',  # ... nested
        ]
    ),
)


def one_bad_field(strategies: dict):
    """(field, value): one field of an otherwise valid form made hostile, so the error must name that field."""
    return st.one_of(*(st.tuples(st.just(name), strategy) for name, strategy in strategies.items()))


# --- the scene and the assertions -----------------------------------------------------------------------
@pytest.fixture
def scene(synced, operator, client):
    """Toy instances waiting on 1.0.0; a finished, a running and a draft migration; a running and an aborted
    rollout of research-agent (so toy has none open and can start one)."""
    waiting_instances(7)
    ids = list(WorkflowInstance.objects.order_by("pk").values_list("pk", flat=True))
    finished = batches.start_migration("toy", source="1.0.0", target="2.0.0", selection={"ids": ids[:2]})
    run_batch(finished.pk)
    running = batches.start_migration("toy", source="1.0.0", target="2.0.0", selection={"ids": ids[2:4]})
    draft = batches.preview_migration("toy", source="1.0.0", target="2.0.0", selection={"ids": ids[4:6]}, freeze=True)
    completed = instances.force_complete(ids[6])
    aborted = rollouts.start_rollout("research-agent", "2.0.0", strategy="linear", gates=GATE)
    rollouts.abort_rollout(aborted.pk)
    open_rollout = rollouts.start_rollout("research-agent", "2.0.0", strategy="linear", gates=GATE)
    client.force_login(operator)
    return SimpleNamespace(
        client=client,
        v1=WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0"),
        v2=WorkflowVersion.objects.get(workflow__name="toy", version="2.0.0"),
        batches={"finished": finished.pk, "running": running.pk, "draft": int(draft.selection_token)},
        instances={"waiting": ids[4], "completed": completed.pk},
        rollouts={"running": open_rollout.pk, "aborted": aborted.pk},
    )


def shown_error(response) -> tuple[str, str]:
    """The (field, message) of the error box the page was re-rendered with."""
    html = response.content.decode()
    box = re.search(r'<div class="error-box" role="alert"><strong>(?:(.*?): )?</strong>(.*?)</div>', html, re.S)
    assert box, f"a {response.status_code} without an error message"
    return unescape(box.group(1) or ""), unescape(box.group(2))


def assert_names_the_target(message: str, target: str) -> None:
    """The error quotes the version typed, or says it is the source itself."""
    assert target.strip()[:20] in message or "source and target" in message, message


def refused(client, url: str, form: dict, *fields: str) -> str:
    """POST hostile input: a 4xx whose error names one of `fields`, and nothing written. Returns the message."""
    before = database_checksum()
    response = client.post(url, form)
    assert 400 <= response.status_code < 500, response.status_code
    field, message = shown_error(response)
    assert field in fields, (field, message)
    assert database_checksum() == before
    return message


# --- HTTP: one hostile field in an otherwise valid form -------------------------------------------------
@FUZZ
@given(
    bad=one_bad_field(
        {
            "target": bad_targets,
            "statuses": bad_status_lists,
            "started_after": bad_moments,
            "started_before": bad_moments,
            "ids": bad_ids,
        }
    )
)
@example(bad=("started_after", "2026-02-30T00:00:00"))
@example(bad=("started_before", "9999-12-31T23:59:59-23:59"))
@example(bad=("target", "9" * 5000 + ".0.0"))
def test_migrate_preview_refuses_each_hostile_field(scene, bad):
    field, value = bad
    form = {"target": "2.0.0", field: value}
    expected = {"target": ("version", "target"), "ids": ("ids", "selection")}.get(field, (field,))
    message = refused(scene.client, reverse("dashboard:version_migrate", args=[scene.v1.pk]), form, *expected)
    if field == "target":
        assert_names_the_target(message, value)


@FUZZ
@given(
    bad=one_bad_field(
        {
            "target": bad_targets,
            "selection_token": st.integers(min_value=-5, max_value=2**70).map(str) | hostile_text,
            "not_before": bad_moments,
            "rate_limit": not_a_whole_number(1, INT_COLUMN_MAX).filter(bool),
            "canary_size": not_a_whole_number(1, INT_COLUMN_MAX).filter(bool),
            "canary_max_failure_rate": bad_failure_percent,
        }
    )
)
@example(bad=("selection_token", ""))
@example(bad=("rate_limit", str(INT_COLUMN_MAX + 1)))
@example(bad=("not_before", "0001-01-01T00:00:00+23:59"))
def test_migrate_confirm_refuses_each_hostile_field(scene, bad):
    field, value = bad
    if field == "selection_token":
        assume(as_int(value) != scene.batches["draft"])
    form = {
        "target": "2.0.0",
        "confirm": "1",
        "selection_token": str(scene.batches["draft"]),
        "not_before": "2030-01-01T00:00:00Z",
        "rate_limit": "100",
        "canary_size": "1",
        "canary_max_failure_rate": "10",
        field: value,
    }
    expected = {"target": ("version", "target")}.get(field, (field,))
    refused(scene.client, reverse("dashboard:version_migrate", args=[scene.v1.pk]), form, *expected)
    assert MigrationBatch.objects.get(pk=scene.batches["draft"]).state == MigrationBatch.State.DRAFT


@FUZZ
@given(
    bad=one_bad_field(
        {
            "action": hostile_text.filter(lambda a: a not in ("make_current", "drain", "retire", "ramp")),
            "percent": not_a_whole_number(0, 100),
        }
    )
)
@example(bad=("percent", "²"))
@example(bad=("percent", "9" * 5000))
def test_lifecycle_refuses_unknown_actions_and_bad_percents(scene, bad):
    field, value = bad
    form = {"action": "ramp", "percent": "10", field: value}
    message = refused(scene.client, reverse("dashboard:version_lifecycle", args=[scene.v1.pk]), form, field)
    if field == "action":
        assert repr(value) in message


def test_lifecycle_refuses_actions_the_version_state_forbids(scene):
    refusals = [
        (scene.v2, {"action": "make_current"}, "already current"),
        (scene.v2, {"action": "drain"}, "is current"),
        (scene.v2, {"action": "retire"}, "is current"),
        (scene.v2, {"action": "ramp", "percent": "10"}, "cannot ramp"),
        (scene.v1, {"action": "retire"}, "in flight"),
        (scene.v1, {"action": "ramp", "percent": "0"}, "not ramping"),
    ]
    for version, form, reason in refusals:
        url = reverse("dashboard:version_lifecycle", args=[version.pk])
        assert reason in refused(scene.client, url, form, "version", "percent"), form


@FUZZ
@given(
    bad=one_bad_field(
        {
            "strategy": hostile_text.filter(lambda s: s not in Rollout.Strategy.values),
            "on_breach": hostile_text.filter(lambda s: s not in Rollout.OnBreach.values),
            "gates": bad_gates,
            "step_percent": not_a_whole_number(1, 99, blank_is_default=True),
            "canary_percent": not_a_whole_number(1, 99, blank_is_default=True),
            "interval_seconds": not_a_whole_number(1, INT_COLUMN_MAX, blank_is_default=True),
        }
    )
)
@example(bad=("interval_seconds", str(INT_COLUMN_MAX + 1)))
@example(bad=("step_percent", "²"))
@example(bad=("gates", "step_failure_rate<=nan"))
@example(bad=("gates", "retries_per_step<=inf"))
def test_rollout_start_refuses_each_hostile_field(scene, bad):
    field, value = bad
    form = {
        "strategy": "linear",
        "gates": GATE,
        "step_percent": "10",
        "canary_percent": "10",
        "interval_seconds": "600",
        "on_breach": "keep",
        field: value,
    }
    refused(scene.client, reverse("dashboard:rollout_start", args=[scene.v1.pk]), form, field)


REFUSED_BATCH_ACTIONS = [
    ("finished", "pause"),
    ("finished", "resume"),
    ("finished", "cancel"),
    ("finished", "retry"),  # it had no failures
    ("running", "resume"),
    ("running", "rollback"),
    ("running", "retry"),
    ("draft", "pause"),
    ("draft", "rollback"),
]


@FUZZ
@given(
    which_and_action=st.sampled_from(REFUSED_BATCH_ACTIONS)
    | st.tuples(
        st.sampled_from(["finished", "running", "draft"]), hostile_text.filter(lambda a: a not in BATCH_ACTIONS)
    )
)
def test_batch_actions_refuse_unknown_actions_and_wrong_states(scene, which_and_action):
    which, action = which_and_action
    known = action in BATCH_ACTIONS
    url = reverse("dashboard:batch_action", args=[scene.batches[which]])
    refused(scene.client, url, {"action": action}, "batch" if known else "action")


@FUZZ
@given(
    which_and_form=st.one_of(
        st.tuples(st.just("waiting"), st.builds(lambda p: {"action": "signal", "payload": p}, unstorable_payloads)),
        st.tuples(st.just("waiting"), st.builds(lambda t: {"action": "migrate", "target": t}, bad_targets)),
        st.tuples(st.just("waiting"), st.builds(lambda a: {"action": a}, hostile_text)),
        st.tuples(st.just("waiting"), st.just({"action": "rollback"})),  # it was never migrated
        st.tuples(
            st.just("completed"),
            st.sampled_from(["signal", "migrate", "cancel", "force_complete"]).map(
                lambda a: {"action": a, "payload": "{}", "target": "2.0.0"}
            ),
        ),
    )
)
@example(which_and_form=("waiting", {"action": "signal", "payload": "[" * 5000}))
@example(which_and_form=("waiting", {"action": "signal", "payload": '{"n": ' + "1" * 5000 + "}"}))
@example(which_and_form=("waiting", {"action": "signal", "payload": '{"deep": ' + "[" * 990 + "]" * 990 + "}"}))
@example(which_and_form=("waiting", {"action": "signal", "payload": '{"note": "\\ud800"}'}))
@example(which_and_form=("waiting", {"action": "signal", "payload": '{"\\ud800": {"x": 1}}'}))
@example(which_and_form=("waiting", {"action": "signal", "payload": '{"a": [{"b": "x\\udc00y"}]}'}))
def test_instance_actions_refuse_hostile_payloads_targets_and_states(scene, which_and_form):
    which, form = which_and_form
    actions = ("migrate", "rollback", "signal", "cancel", "force_complete")
    if form["action"] not in actions:
        expected = ("action",)
    elif which == "completed" or form["action"] == "rollback":
        expected = ("instance",)
    else:
        expected = {"signal": ("payload",), "migrate": ("version", "target")}[form["action"]]
    url = reverse("dashboard:instance_action", args=[scene.instances[which]])
    message = refused(scene.client, url, form, *expected)
    if expected == ("version", "target"):
        assert_names_the_target(message, form["target"])


@FUZZ
@given(
    which_and_action=st.tuples(st.just("running"), st.just("resume"))
    | st.tuples(st.just("aborted"), st.sampled_from(["pause", "resume", "abort", "promote"]))
    | st.tuples(st.sampled_from(["running", "aborted"]), hostile_text.filter(lambda a: a not in ROLLOUT_ACTIONS))
)
def test_rollout_actions_refuse_unknown_actions_and_wrong_states(scene, which_and_action):
    which, action = which_and_action
    known = action in ROLLOUT_ACTIONS
    url = reverse("dashboard:rollout_action", args=[scene.rollouts[which]])
    refused(scene.client, url, {"action": action}, "rollout" if known else "action")


MUTATING_URLS = {
    "dashboard:version_lifecycle": (WorkflowVersion, {"action": "drain"}),
    "dashboard:version_migrate": (WorkflowVersion, {"target": "2.0.0"}),
    "dashboard:rollout_start": (WorkflowVersion, {"strategy": "linear", "gates": GATE}),
    "dashboard:batch_action": (MigrationBatch, {"action": "cancel"}),
    "dashboard:instance_action": (WorkflowInstance, {"action": "cancel"}),
    "dashboard:rollout_action": (Rollout, {"action": "abort"}),
}


@FUZZ
@given(name=st.sampled_from(sorted(MUTATING_URLS)), pk=st.integers(min_value=0, max_value=2**80))
@example(name="dashboard:batch_action", pk=2**63)
def test_forged_ids_in_urls_are_404(scene, name, pk):
    model, form = MUTATING_URLS[name]
    assume(not model.objects.filter(pk=pk).exists())
    before = database_checksum()
    assert scene.client.post(reverse(name, args=[pk]), form).status_code == 404
    assert database_checksum() == before


@FUZZ
@given(query=st.dictionaries(st.sampled_from(["status", "older_than_hours", "id", "page"]), hostile_text))
@example(query={"older_than_hours": "99999999999"})
@example(query={"id": "²"})
def test_filters_on_the_version_page_and_its_error_rerender_never_crash(scene, query):
    """Operators' actions re-render the version page with its filters (the query string) on errors."""
    before = database_checksum()
    assert scene.client.get(reverse("dashboard:version", args=[scene.v1.pk]), query).status_code == 200
    url = reverse("dashboard:version_lifecycle", args=[scene.v1.pk])
    assert scene.client.post(f"{url}?{urlencode(query)}", {"action": "retire"}).status_code == 409
    assert database_checksum() == before


@FUZZ
@given(query=st.dictionaries(st.sampled_from(["action", "actor", "instance", "page"]), hostile_text))
@example(query={"actor": "a\x00b"})
@example(query={"instance": "²"})
def test_filters_on_the_audit_log_never_crash(scene, query):
    assert scene.client.get(reverse("dashboard:audit"), query).status_code == 200


def test_request_bodies_over_the_upload_limit_are_400(scene, settings):
    url = reverse("dashboard:instance_action", args=[scene.instances["waiting"]])
    before = database_checksum()
    payload = json.dumps({"blob": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)})
    response = scene.client.post(url, {"action": "signal", "payload": payload})
    assert response.status_code == 400
    assert database_checksum() == before


# --- CLI: bad arguments are a CommandError naming the field, and nothing written --------------------------
# argv cannot carry NUL, and argparse reads a leading "-" as an option: neither reaches the services.
argv_text = st.text(alphabet=st.characters(exclude_characters="\x00"), max_size=20).filter(
    lambda t: not t.startswith("-")
)
forged_numbers = st.integers(min_value=-(2**70), max_value=2**70).map(str) | argv_text.filter(
    lambda t: as_int(t) is None
)
argv_versions = bad_versions.filter(lambda t: "\x00" not in t and not t.startswith("-")) | unknown_versions


@pytest.fixture
def cli_scene(synced):
    """Toy instances waiting on 1.0.0, one finished migration of two of them and its finished rollback."""
    waiting_instances(4)
    ids = list(WorkflowInstance.objects.order_by("pk").values_list("pk", flat=True))
    migration = batches.start_migration("toy", source="1.0.0", target="2.0.0", selection={"ids": ids[:2]})
    run_batch(migration.pk)
    rollback = batches.start_rollback(migration.pk)
    run_batch(rollback.pk)
    return SimpleNamespace(migration=migration.pk, rollback=rollback.pk)


def cli_refused(*args: str, fields: tuple[str, ...]) -> str:
    """`manage.py workflows ARGS` exits non-zero with a message ending in one of [fields]; nothing written."""
    before = database_checksum()
    with pytest.raises(CommandError) as refusal:
        call_command("workflows", *args)
    message = str(refusal.value)
    named = re.search(r"\[(\w+)\]$", message)
    assert refusal.value.returncode != 0 and named and named.group(1) in fields, message
    assert database_checksum() == before
    return message


@FUZZ
@given(
    command=st.sampled_from(["make-current", "drain", "retire", "ramp"]),
    workflow_and_version=st.tuples(st.just("toy"), argv_versions)
    | st.tuples(argv_text.filter(lambda name: name not in ("toy", "research-agent")), st.just("1.0.0")),
)
@example(command="ramp", workflow_and_version=("toy", "9" * 5000 + ".0.0"))
@example(command="make-current", workflow_and_version=("\ud800", "1.0.0"))  # argv bytes that are not UTF-8
def test_cli_lifecycle_commands_refuse_malformed_versions_and_unknown_workflows(
    cli_scene, command, workflow_and_version
):
    workflow, version = workflow_and_version
    percent = ["10"] if command == "ramp" else []
    message = cli_refused(command, workflow, version, *percent, fields=("workflow", "version"))
    assert (workflow if workflow != "toy" else version.strip())[:20] in message


@FUZZ
@given(percent=not_a_whole_number(0, 100).filter(lambda t: "\x00" not in t and not t.startswith("-")))
def test_cli_ramp_refuses_bad_percents(cli_scene, percent):
    cli_refused("ramp", "toy", "1.0.0", percent, fields=("percent",))


@FUZZ
@given(
    bad=one_bad_field(
        {
            "--from": argv_versions,
            "--to": argv_versions | st.just("1.0.0"),
            "--chunk-size": st.integers().filter(lambda n: not 1 <= n <= batches.MAX_CHUNK).map(str),
            "--ids": forged_instance_ids | argv_text.filter(has_a_non_number),
            "--status": argv_text.filter(lambda t: t not in MIGRATABLE_STATUSES),
            "--started-after": bad_moments.filter(lambda t: "\x00" not in t),
            "--start-at": bad_moments.filter(lambda t: "\x00" not in t),
            "--rate-limit": not_a_whole_number(1, INT_COLUMN_MAX).filter(lambda t: t and "\x00" not in t),
            "--canary-max-failure-rate": st.floats().filter(lambda f: not 0 <= f <= 1).map(str),
        }
    )
)
@example(bad=("--start-at", "2026-02-30T00:00:00"))
@example(bad=("--chunk-size", "0"))
def test_cli_migrate_refuses_each_bad_option(cli_scene, bad):
    option, value = bad
    options = {"--from": "1.0.0", "--to": "2.0.0", "--canary": "1", option: value}
    fields = {
        "--from": ("version",),
        "--to": ("version", "target"),
        "--chunk-size": ("chunk_size",),
        "--ids": ("ids", "selection"),
        "--status": ("statuses",),
        "--started-after": ("started_after",),
        "--start-at": ("not_before",),
        "--rate-limit": ("rate_limit",),
        "--canary-max-failure-rate": ("canary_max_failure_rate",),
    }[option]
    cli_refused("migrate", "toy", *(f"{name}={text}" for name, text in options.items()), fields=fields)


@FUZZ
@given(
    command=st.sampled_from(["rollback", "retry"]),
    batch_id=forged_numbers,
)
def test_cli_batch_commands_refuse_forged_batch_ids(cli_scene, command, batch_id):
    assume(as_int(batch_id) not in (cli_scene.migration, cli_scene.rollback))
    cli_refused(command, batch_id, fields=("batch",))


def test_cli_batch_commands_refuse_batches_in_the_wrong_state(cli_scene):
    assert "is a rollback" in cli_refused("rollback", str(cli_scene.rollback), fields=("batch",))
    assert "no failed instance" in cli_refused("retry", str(cli_scene.migration), fields=("batch",))
    assert "no migrated instance left" in cli_refused("rollback", str(cli_scene.migration), fields=("batch",))


@FUZZ
@given(
    action=st.sampled_from(["pause", "resume", "abort", "promote"]),
    rollout_id=forged_numbers,
)
def test_cli_rollout_actions_refuse_forged_rollout_ids(cli_scene, action, rollout_id):
    assert not Rollout.objects.exists()  # every id is forged
    cli_refused("rollout", action, rollout_id, fields=("rollout",))


def test_cli_options_argparse_cannot_read_exit_with_2(cli_scene, capsys):
    before = database_checksum()
    with pytest.raises(SystemExit) as exit_:
        call_command("workflows", "migrate", "toy", "--from=1.0.0")
    assert exit_.value.code == 2 and "the following arguments are required: --to" in capsys.readouterr().err
    # Numbers are not argparse's: the one parser reads them, and its refusal exits 2 as well.
    cli_refused("migrate", "toy", "--from=1.0.0", "--to=2.0.0", "--chunk-size=lots", fields=("chunk_size",))
    assert database_checksum() == before


# --- the same action twice at the same moment ------------------------------------------------------------
@pytest.fixture
def broker_emptied_after():
    """Transactional tests commit, so launched batches send their chunk tasks; no worker should inherit them."""
    yield
    purge_broker()


def post_twice_at_once(user, url: str, form: dict) -> list:
    """POST the same form from two threads released together, each on its own database connection."""
    clients = [Client(), Client()]
    for client in clients:
        client.force_login(user)
    barrier = threading.Barrier(len(clients))
    responses, errors = [None] * len(clients), []

    def submit(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            responses[index] = clients[index].post(url, form)
        except Exception as exc:  # a 500 surfaces here; reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit, args=(index,)) for index in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    return responses


def winner_and_loser(responses, *loser_fields: str):
    """One request went through (a redirect), the other was refused with a 409 naming the field."""
    responses = sorted(responses, key=lambda response: response.status_code)
    assert [response.status_code for response in responses] == [302, 409]
    assert shown_error(responses[1])[0] in loser_fields
    return responses


def migrated_toy_batch(count: int) -> tuple[MigrationBatch, dict[int, int]]:
    """A finished migration of `count` waiting toy instances, and their revisions after it."""
    waiting_instances(count)
    batch = run_batch(batches.start_migration("toy", source="1.0.0", target="2.0.0").pk, busy_too=True)
    assert batch.succeeded == count
    return batch, dict(WorkflowInstance.objects.values_list("pk", "revision"))


def assert_each_moved_once(revisions: dict[int, int], version: str) -> None:
    """Every instance moved exactly once: one revision more than `revisions`, on `version`."""
    after = WorkflowInstance.objects.values_list("pk", "version__version", "revision")
    assert {pk: (on, revision) for pk, on, revision in after} == {
        pk: (version, revision + 1) for pk, revision in revisions.items()
    }


@pytest.mark.django_db(transaction=True)
def test_confirming_one_preview_twice_at_once_launches_it_once(synced, operator, broker_emptied_after):
    waiting_instances(20)
    revisions = dict(WorkflowInstance.objects.values_list("pk", "revision"))
    token = batches.preview_migration(
        "toy", source="1.0.0", target="2.0.0", freeze=True, actor=operator
    ).selection_token
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    form = {"target": "2.0.0", "selection_token": token, "confirm": "1"}
    winner, _ = winner_and_loser(
        post_twice_at_once(operator, reverse("dashboard:version_migrate", args=[v1.pk]), form), "selection_token"
    )
    assert winner["Location"] == reverse("dashboard:batch", args=[int(token)])
    assert MigrationBatch.objects.count() == 1  # the draft itself was launched, and nothing else
    assert AuditEvent.objects.filter(action="batch.started", batch_id=int(token)).count() == 1
    batch = run_batch(int(token), busy_too=True)
    assert (batch.state, batch.total, batch.succeeded) == ("completed", 20, 20)
    assert_each_moved_once(revisions, "2.0.0")


@pytest.mark.django_db(transaction=True)
def test_rolling_back_one_batch_twice_at_once_rolls_it_back_once(synced, operator, broker_emptied_after):
    batch, revisions = migrated_toy_batch(10)
    url = reverse("dashboard:batch_action", args=[batch.pk])
    winner_and_loser(post_twice_at_once(operator, url, {"action": "rollback", "confirmed": "1"}), "batch")
    rollback = MigrationBatch.objects.get(parent=batch, kind=MigrationBatch.Kind.ROLLBACK)  # exactly one
    assert run_batch(rollback.pk, busy_too=True).succeeded == 10
    assert_each_moved_once(revisions, "1.0.0")


@pytest.mark.django_db(transaction=True)
def test_a_rollback_still_in_progress_is_not_started_again(synced, operator, broker_emptied_after):
    batch, _ = migrated_toy_batch(3)
    first = batches.start_rollback(batch.pk, actor=operator)  # no worker runs it: its items stay pending
    before = database_checksum()
    client = Client()
    client.force_login(operator)
    response = client.post(reverse("dashboard:batch_action", args=[batch.pk]), {"action": "rollback"})
    assert response.status_code == 409 and f"batch #{first.pk}" in shown_error(response)[1]
    assert database_checksum() == before


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("workflow", "label", "action", "audited"),
    [
        ("toy", "1.0.0", "make_current", "version.made_current"),
        ("toy", "1.0.0", "drain", "version.drained"),
        ("research-agent", "1.0.0", "retire", "version.retired"),
    ],
)
def test_one_lifecycle_action_twice_at_once_acts_once(
    synced, operator, broker_emptied_after, workflow, label, action, audited
):
    version = WorkflowVersion.objects.get(workflow__name=workflow, version=label)
    url = reverse("dashboard:version_lifecycle", args=[version.pk])
    winner_and_loser(post_twice_at_once(operator, url, {"action": action}), "version")
    assert AuditEvent.objects.filter(action=audited, version=version, actor=operator).count() == 1
    assert WorkflowVersion.objects.filter(workflow__name=workflow, state="current").count() == 1


@pytest.mark.django_db(transaction=True)
def test_pausing_one_batch_twice_at_once_pauses_it_once(synced, operator, broker_emptied_after):
    waiting_instances(5)
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0")  # running; no worker takes its chunks
    url = reverse("dashboard:batch_action", args=[batch.pk])
    winner_and_loser(post_twice_at_once(operator, url, {"action": "pause"}), "batch")
    assert MigrationBatch.objects.get(pk=batch.pk).state == MigrationBatch.State.PAUSED
    assert AuditEvent.objects.filter(action="batch.paused", batch=batch).count() == 1
