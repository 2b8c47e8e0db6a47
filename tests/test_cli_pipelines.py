"""The command line as a deploy pipeline drives it: explicit empty filters refused, --wait that ends
(timeout, no worker), exit codes that tell the outcome, batch pause/resume/cancel, one number parser."""

import getpass
import json
import re
from datetime import timedelta
from io import StringIO
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone

from workflows_admin.workflows.cli import exit_codes
from workflows_admin.workflows.models import AuditEvent, MigrationBatch, Workflow, WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.services import batches, lifecycle, rollouts
from workflows_admin.workflows.services.errors import InvalidInput
from workflows_admin.workflows.services.numbers import parse_whole_number

from .helpers import run_batch, waiting_instances
from .test_hostile_requests import database_checksum

pytestmark = pytest.mark.django_db
ACTOR = f"cli:{getpass.getuser()}"


def arabic(digits: str) -> str:
    """ASCII digits as Arabic-Indic digits, which int() reads as the same number."""
    return digits.translate({ord("0") + i: 0x660 + i for i in range(10)})


ROLLOUT, GATE = ("rollout", "start", "toy", "2.0.0"), "--gate=step_failure_rate<=0.1"


def fullwidth(digits: str) -> str:
    return digits.translate({ord("0") + i: 0xFF10 + i for i in range(10)})


def cli(*args: str) -> tuple[int, str, str]:
    """`manage.py workflows ARGS` in this process: (exit code, stdout, the CommandError's message)."""
    out = StringIO()
    try:
        call_command("workflows", *args, stdout=out)
    except CommandError as error:
        return error.returncode, out.getvalue(), str(error)
    return 0, out.getvalue(), ""


def refused(*args: str, field: str) -> str:
    """Exit 2 with a one-line reason ending in [field]; nothing written."""
    before = database_checksum()
    code, _, message = cli(*args)
    assert code == exit_codes.BAD_INPUT and message.endswith(f"[{field}]"), (code, message)
    assert database_checksum() == before
    return message


# --- 9: a filter given empty is an error, not "every instance" ---------------------------------------
@pytest.mark.parametrize(
    "option, field",
    [
        ("--ids", "ids"),
        ("--status", "statuses"),
        ("--started-after", "started_after"),
        ("--started-before", "started_before"),
        ("--start-at", "not_before"),
        ("--rate-limit", "rate_limit"),
        ("--canary", "canary_size"),
        ("--canary-max-failure-rate", "canary_max_failure_rate"),
    ],
)
@pytest.mark.parametrize("empty", ["", "  "])
def test_migrate_refuses_an_option_given_an_empty_value(synced, option, field, empty):
    waiting_instances(3)
    message = refused("migrate", "toy", "--from=1.0.0", "--to=2.0.0", f"{option}={empty}", field=field)
    assert option in message and not MigrationBatch.objects.exists()


@pytest.mark.parametrize("ids", ["8,,9", ",", "8,", ",8", "8, ,9"])
def test_a_malformed_id_list_is_refused_by_the_selection_parser(synced, client, operator, ids):
    waiting_instances(3)
    with pytest.raises(InvalidInput) as error:
        batches.parse_selection({"ids": ids})
    assert error.value.field == "ids"
    refused("migrate", "toy", "--from=1.0.0", "--to=2.0.0", f"--ids={ids}", field="ids")
    client.force_login(operator)
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    response = client.post(reverse("dashboard:version_migrate", args=[v1.pk]), {"target": "2.0.0", "ids": ids})
    assert response.status_code == 400 and "ids" in response.content.decode()
    assert not MigrationBatch.objects.exists()


def test_the_dashboard_blank_fields_still_mean_no_filter(synced, client, operator):
    waiting_instances(3)
    client.force_login(operator)
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    form = {
        "target": "2.0.0",
        "ids": "",
        "started_after": "",
        "started_before": "",
        "rate_limit": "",
        "canary_size": "",
    }
    response = client.post(reverse("dashboard:version_migrate", args=[v1.pk]), form)
    assert response.status_code == 200
    assert MigrationBatch.objects.get(state="draft").total == 3


# --- 12: batch pause | resume | cancel ---------------------------------------------------------------
def test_batch_pause_resume_cancel_use_the_services_and_are_audited(synced):
    waiting_instances(3)
    batch = batches.start_migration(
        "toy", source="1.0.0", target="2.0.0", pacing={"not_before": timezone.now() + timedelta(hours=1)}
    )
    code, out, _ = cli("batch", "pause", str(batch.pk), "--json")
    assert code == 0 and json.loads(out)["state"] == "paused"
    code, out, _ = cli("batch", "resume", str(batch.pk))
    assert code == 0 and f"batch #{batch.pk}" in out and "running" in out
    code, out, _ = cli("batch", "cancel", str(batch.pk), "--json")
    assert code == 0 and json.loads(out)["state"] == "cancelled"
    actors = dict(AuditEvent.objects.filter(batch_id=batch.pk).values_list("action", "actor_label"))
    assert {actors[a] for a in ("batch.paused", "batch.resumed", "batch.cancelled")} == {ACTOR}
    assert "already cancelled" in refused("batch", "cancel", str(batch.pk), field="batch")
    refused("batch", "pause", "999999", field="batch")
    refused("batch", "resume", arabic("5"), field="batch")


# --- 13: one number parser ----------------------------------------------------------------------------
@pytest.mark.parametrize("limit", ["-1", "0", "99999999999999999999", "9" * 5000, arabic("5"), "lots", ""])
def test_batches_limit_is_refused_not_a_traceback(synced, limit):
    refused("batches", f"--limit={limit}", field="limit")


def test_batches_limit_takes_ascii_digits(synced):
    waiting_instances(3)
    for _ in range(3):
        batches.start_migration(
            "toy", source="1.0.0", target="2.0.0", pacing={"not_before": timezone.now() + timedelta(hours=1)}
        )
    code, out, _ = cli("batches", "--limit", "2", "--json")
    assert code == 0 and len(json.loads(out)["batches"]) == 2


@pytest.mark.parametrize(
    "typed", ["50", " 50 ", "050", arabic("50"), fullwidth("50"), "+50", "5_0", "50.0", "-0", "101"]
)
def test_ramp_reads_the_percent_the_same_in_the_cli_and_the_dashboard(synced, client, operator, typed):
    lifecycle.make_current(WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0"))
    v2 = WorkflowVersion.objects.get(workflow__name="toy", version="2.0.0")
    code, _, message = cli("ramp", "toy", "2.0.0", typed)
    by_cli = Workflow.objects.get(name="toy").ramp_percent if code == 0 else message
    if code == 0:
        lifecycle.set_ramp(v2, 0)
    client.force_login(operator)
    response = client.post(reverse("dashboard:version_lifecycle", args=[v2.pk]), {"action": "ramp", "percent": typed})
    by_dashboard = Workflow.objects.get(name="toy").ramp_percent
    if typed.strip() in ("50", "050"):
        assert by_cli == by_dashboard == 50 and response.status_code == 302
    else:
        assert code == exit_codes.BAD_INPUT and message.endswith("[percent]") and by_dashboard == 0
        assert response.status_code == 400 and "percent must be a whole number from 0 to 100" in message


@pytest.mark.parametrize(
    "args, field",
    [
        (["migrate", "toy", "--from=1.0.0", "--to=2.0.0", arabic("--rate-limit=5")], "rate_limit"),
        (["migrate", "toy", "--from=1.0.0", "--to=2.0.0", arabic("--canary=1")], "canary_size"),
        (["migrate", "toy", "--from=1.0.0", "--to=2.0.0", arabic("--chunk-size=500")], "chunk_size"),
        (["migrate", "toy", "--from=1.0.0", "--to=2.0.0", "--wait", arabic("--timeout=5")], "timeout"),
        (["cleanup", arabic("--chunk-size=5")], "chunk_size"),
        (["cleanup", "--chunk-size=99999999999999999999"], "chunk_size"),
        (["rollout", "start", "toy", "2.0.0", "--gate=step_failure_rate<=0.1", arabic("--step=5")], "step_percent"),
        (["rollout", "start", "toy", "2.0.0", "--gate=step_failure_rate<=0.1", arabic("--canary=5")], "canary_percent"),
        (
            ["rollout", "start", "toy", "2.0.0", "--gate=step_failure_rate<=0.1", arabic("--interval=60")],
            "interval_seconds",
        ),
        (["rollout", "start", "toy", "2.0.0", "--gate=step_failure_rate<=0.1:min=" + arabic("5")], "gates"),
    ],
)
def test_other_scripts_digits_are_refused_everywhere_in_the_cli(synced, args, field):
    lifecycle.make_current(WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0"))
    waiting_instances(3)
    refused(*args, field=field)


@pytest.fixture
def existing(synced):
    """A finished migration with a failure, an instance and a running rollout: ids that exist."""
    lifecycle.make_current(WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0"))
    waiting_instances(3)
    poisoned = WorkflowInstance.objects.order_by("pk").last()
    WorkflowInstance.objects.filter(pk=poisoned.pk).update(context={"n": 0, "poison": True})
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0", selection={"ids": [poisoned.pk]})
    run_batch(batch.pk)
    # The poisoned instance would fail the rollout's verification: it is here as a failed batch item.
    rollout = rollouts.start_rollout(
        "toy", "2.0.0", strategy="linear", gates=GATE.split("=", 1)[1], skip_verification="ids to refer to"
    )
    instance = WorkflowInstance.objects.order_by("pk").first()
    return SimpleNamespace(batch=batch.pk, rollout=rollout.pk, instance=instance.pk)


def test_ids_in_other_scripts_digits_name_no_row(existing):
    refused("rollback", arabic(str(existing.batch)), field="batch")
    refused("retry", arabic(str(existing.batch)), field="batch")
    refused("rollout", "pause", arabic(str(existing.rollout)), field="rollout")
    refused("migrate", "toy", "--from=1.0.0", "--to=2.0.0", f"--ids={arabic(str(existing.instance))}", field="ids")


def test_services_read_numbers_with_the_one_parser(existing):
    for call, field in [
        (lambda: batches.parse_selection({"ids": [arabic(str(existing.instance))]}), "ids"),
        (lambda: batches.Pacing.parse({"rate_limit": arabic("5")}), "rate_limit"),
        (lambda: batches.Pacing.parse({"canary_size": " +5"}), "canary_size"),
        (lambda: batches.start_rollback(arabic(str(existing.batch))), "batch"),
        (lambda: batches.retry_failed(arabic(str(existing.batch))), "batch"),
        (lambda: batches.migrate_instance(arabic(str(existing.instance)), "2.0.0"), "instance"),
        (lambda: rollouts.pause_rollout(arabic(str(existing.rollout))), "rollout"),
        (lambda: rollouts.parse_gates("step_failure_rate<=0.1:min=" + arabic("5")), "gates"),
    ]:
        with pytest.raises(InvalidInput) as error:
            call()
        assert error.value.field == field
    assert batches.Pacing.parse({"rate_limit": "5", "canary_size": 7}).rate_limit == 5
    assert parse_whole_number(" 0042 ", "n", minimum=0, maximum=100) == 42


def test_dashboard_pacing_and_pages_read_numbers_with_the_one_parser(synced, client, operator):
    waiting_instances(3)
    client.force_login(operator)
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    url = reverse("dashboard:version_migrate", args=[v1.pk])
    response = client.post(url, {"target": "2.0.0", "ids": arabic("1")})
    assert response.status_code == 400
    draft = client.post(url, {"target": "2.0.0"})
    token = MigrationBatch.objects.get(state="draft").pk
    assert draft.status_code == 200
    response = client.post(
        url, {"target": "2.0.0", "selection_token": token, "confirm": "1", "rate_limit": arabic("5")}
    )
    assert response.status_code == 400 and "rate_limit must be a whole number" in response.content.decode()
    for _ in range(101):
        AuditEvent.objects.create(action="test.filler", actor_label="test", message="filler")

    def page_shown(page: str) -> str:
        return re.search(r"page \d+ of \d+", client.get(reverse("dashboard:audit"), {"page": page}).content.decode())[0]

    assert page_shown("2") == "page 2 of 2"
    assert page_shown(arabic("2")) == page_shown("abc") == "page 1 of 2"  # not a number: the first page, as Django does
