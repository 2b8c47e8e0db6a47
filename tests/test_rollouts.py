"""Progressive rollout with health gates, on a clock the test controls."""

from datetime import timedelta

import pytest
from django.utils import timezone

from workflows_admin.workflows.models import (
    AuditEvent,
    MigrationBatch,
    Rollout,
    StepRun,
    WorkflowInstance,
    WorkflowVersion,
)
from workflows_admin.workflows.services import rollouts
from workflows_admin.workflows.services.errors import ServiceError
from workflows_admin.workflows.services.instances import start_workflows
from workflows_admin.workflows.services.lifecycle import make_current

pytestmark = pytest.mark.django_db
GATES = [{"metric": "step_failure_rate", "threshold": 0.1, "min_samples": 10}]
V2_CONTEXT = {"n": 0, "label": "x"}


@pytest.fixture
def toy_on_v1(synced):
    make_current(WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0"))


def version(label):
    return WorkflowVersion.objects.get(workflow__name="toy", version=label)


def step_runs(n: int, outcome: str, at) -> None:
    """Step runs of the target version, finished at `at` (instances started by the rollout's routing)."""
    target = version("2.0.0")
    instances = start_workflows("toy", [V2_CONTEXT] * n, version="2.0.0")
    StepRun.objects.bulk_create(
        StepRun(
            instance=i,
            version=target,
            step="first",
            attempt=1,
            claim_revision=2,
            outcome=outcome,
            started_at=at,
            finished_at=at,
            error="boom" if outcome != "succeeded" else "",
        )
        for i in instances
    )


def test_a_healthy_linear_rollout_advances_step_by_step_to_current(toy_on_v1, operator):
    t0 = timezone.now()
    rollout = rollouts.start_rollout(
        "toy", "2.0.0", strategy="linear", step_percent=10, interval_seconds=600, gates=GATES, actor=operator, now=t0
    )
    assert (version("2.0.0").state, rollout.current_percent) == ("ramping", 10)
    seen = [10]
    for k in range(1, 10):
        now = t0 + timedelta(minutes=10 * k, seconds=1)
        step_runs(12, "succeeded", now - timedelta(seconds=30))
        assert rollouts.tick(rollout.pk, now=now - timedelta(minutes=5)) == "hold"  # interval not over yet
        decision = rollouts.tick(rollout.pk, now=now)
        rollout.refresh_from_db()
        seen.append(rollout.current_percent)
        assert decision == ("complete" if k == 9 else "advance")
    assert seen == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    # Nothing was left in flight on 1.0.0, so it is drained at once.
    assert (rollout.state, version("2.0.0").state, version("1.0.0").state) == ("completed", "current", "drained")
    decisions = [d for d in rollout.events.values_list("decision", flat=True) if d != "hold"]
    assert decisions == ["verify", "start", *["advance"] * 8, "complete"]
    advance = rollout.events.filter(decision="advance").first()
    assert advance.figures[0]["verdict"] == "pass" and advance.figures[0]["samples"] == 12
    assert AuditEvent.objects.filter(action="rollout.advance").count() == 8


def test_a_failing_version_is_halted_new_starts_go_back_and_instances_migrate_back(toy_on_v1):
    t0 = timezone.now()
    rollout = rollouts.start_rollout(
        "toy",
        "2.0.0",
        strategy="linear",
        step_percent=20,
        interval_seconds=600,
        gates=GATES,
        on_breach="migrate_back",
        now=t0,
    )
    step_runs(8, "succeeded", t0 + timedelta(seconds=5))
    step_runs(4, "failed", t0 + timedelta(seconds=6))
    assert rollouts.tick(rollout.pk, now=t0 + timedelta(seconds=30)) == "halt"  # no need to wait the interval
    rollout.refresh_from_db()
    assert (rollout.state, rollout.current_percent) == ("halted", 0)
    assert "step_failure_rate 0.3333 > 0.1" in rollout.halted_reason
    assert version("2.0.0").state == "active"
    started = start_workflows("toy", [{"n": 0}] * 50, start_keys=[f"k{i}" for i in range(50)])
    assert {i.version.version for i in started} == {"1.0.0"}  # every new start back on the previous version
    batch = MigrationBatch.objects.get()
    assert (batch.source_version.version, batch.target_version.version, batch.created_by) == ("2.0.0", "1.0.0", None)
    handled = rollout.events.get(decision="on_breach")
    assert handled.message == f"on_breach migrate_back: migrating {batch.total} instance(s) back in batch #{batch.pk}"
    halt = rollout.events.get(decision="halt")
    assert halt.message == "halted: step_failure_rate 0.3333 > 0.1; new starts go to 1.0.0 again"
    assert halt.figures[0] == {
        "metric": "step_failure_rate",
        "threshold": 0.1,
        "min_samples": 10,
        "value": 0.3333,
        "samples": 12,
        "verdict": "breach",
    }


def test_halting_can_park_or_keep_the_instances(toy_on_v1):
    t0 = timezone.now()
    rollout = rollouts.start_rollout(
        "toy", "2.0.0", strategy="canary", canary_percent=10, gates=GATES, on_breach="park", now=t0
    )
    step_runs(10, "failed", t0 + timedelta(seconds=1))
    assert rollouts.tick(rollout.pk, now=t0 + timedelta(seconds=2)) == "halt"
    assert set(WorkflowInstance.objects.filter(version__version="2.0.0").values_list("status", flat=True)) == {"parked"}
    assert WorkflowInstance.objects.filter(status_reason__startswith=f"parked by rollout #{rollout.pk}").count() == 10


def test_too_few_samples_neither_advance_nor_halt(toy_on_v1):
    t0 = timezone.now()
    rollout = rollouts.start_rollout(
        "toy", "2.0.0", strategy="linear", step_percent=10, interval_seconds=60, gates=GATES, now=t0
    )
    step_runs(3, "failed", t0 + timedelta(seconds=1))  # 100% failures, but 3 < 10 samples
    assert rollouts.tick(rollout.pk, now=t0 + timedelta(minutes=5)) == "hold"
    assert rollouts.tick(rollout.pk, now=t0 + timedelta(minutes=6)) == "hold"
    rollout.refresh_from_db()
    assert (rollout.state, rollout.current_percent) == ("running", 10)
    assert rollout.events.filter(decision="hold").count() == 1  # an unchanged hold is recorded once


def test_pause_resume_abort_and_promote_are_audited_with_the_user(toy_on_v1, operator):
    t0 = timezone.now()
    rollout = rollouts.start_rollout("toy", "2.0.0", strategy="linear", gates=GATES, now=t0)
    rollouts.pause_rollout(rollout.pk, actor=operator, now=t0)
    assert rollouts.tick(rollout.pk, now=t0 + timedelta(hours=1)) == "paused"
    rollouts.resume_rollout(rollout.pk, actor=operator, now=t0 + timedelta(hours=1))
    rollouts.abort_rollout(rollout.pk, actor=operator)
    rollout.refresh_from_db()
    assert (rollout.state, version("2.0.0").state) == ("aborted", "active")
    again = rollouts.start_rollout("toy", "2.0.0", strategy="canary", gates=GATES, now=t0)
    rollouts.promote_rollout(again.pk, actor=operator)
    assert version("2.0.0").state == "current"
    actions = set(AuditEvent.objects.filter(actor=operator).values_list("action", flat=True))
    assert {"rollout.pause", "rollout.resume", "rollout.abort", "rollout.complete"} <= actions


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "sideways", "gates": GATES}, "strategy must be one of"),
        ({"strategy": "linear", "gates": []}, "gates must be a non-empty list"),
        ({"strategy": "linear", "gates": "latency<=3"}, "metric must be one of"),
        ({"strategy": "linear", "gates": "step_failure_rate<=x"}, "threshold must be a number"),
        ({"strategy": "linear", "gates": GATES, "step_percent": 0}, "step_percent must be a whole number"),
        ({"strategy": "linear", "gates": GATES, "on_breach": "panic"}, "on_breach must be one of"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(toy_on_v1, kwargs, message):
    with pytest.raises(ServiceError, match=message):
        rollouts.start_rollout("toy", "2.0.0", **kwargs)
    assert not Rollout.objects.exists() and version("2.0.0").state == "drained"  # as the fixture left it


def test_one_rollout_at_a_time_and_not_of_the_current_version(toy_on_v1):
    rollouts.start_rollout("toy", "2.0.0", strategy="linear", gates=GATES)
    with pytest.raises(ServiceError, match="already has a rollout running"):
        rollouts.start_rollout("toy", "2.0.0", strategy="linear", gates=GATES)
    with pytest.raises(ServiceError, match="already current"):
        rollouts.start_rollout("toy", "1.0.0", strategy="linear", gates=GATES)


def test_cli_starts_reports_and_aborts_with_json(toy_on_v1, capsys):
    import json

    from django.core.management import call_command
    from django.core.management.base import CommandError

    call_command(
        "workflows",
        "rollout",
        "start",
        "toy",
        "2.0.0",
        "--step",
        "25",
        "--gate",
        "step_failure_rate<=0.05:min=20",
        "--json",
    )
    started = json.loads(capsys.readouterr().out)
    assert (started["state"], started["percent"], started["previous"]) == ("running", 25, "1.0.0")
    call_command("workflows", "rollout", "abort", str(started["rollout_id"]), "--json")
    assert json.loads(capsys.readouterr().out)["state"] == "aborted"
    with pytest.raises(CommandError, match="metric must be one of"):
        call_command("workflows", "rollout", "start", "toy", "2.0.0", "--gate", "p99<=3")
    with pytest.raises(CommandError, match="no rollout #999"):
        call_command("workflows", "rollout", "pause", "999")


def test_rollout_pages_and_permissions(client, operator, django_user_model, toy_on_v1):
    from django.contrib.auth.models import Permission
    from django.urls import reverse

    client.force_login(operator)
    v2 = version("2.0.0")
    response = client.post(
        reverse("dashboard:rollout_start", args=[v2.pk]),
        {
            "strategy": "linear",
            "step_percent": "20",
            "interval_seconds": "60",
            "gates": "step_failure_rate<=0.1:min=5",
            "on_breach": "keep",
        },
    )
    rollout = Rollout.objects.get()
    assert response.status_code == 302 and rollout.current_percent == 20 and rollout.created_by == operator
    page = client.get(reverse("dashboard:rollout", args=[rollout.pk])).content.decode()
    assert "<polyline" in page and 'value="abort"' in page
    bad = client.post(
        reverse("dashboard:rollout_start", args=[v2.pk]), {"strategy": "linear", "gates": "x", "on_breach": "keep"}
    )
    assert bad.status_code == 400 and "is not of the form metric&lt;=threshold" in bad.content.decode()
    viewer = django_user_model.objects.create_user("watcher", password="pw-watch-123")
    viewer.user_permissions.add(Permission.objects.get(codename="view_dashboard"))
    client.force_login(viewer)
    assert 'value="abort"' not in client.get(reverse("dashboard:rollout", args=[rollout.pk])).content.decode()
    assert client.post(reverse("dashboard:rollout_action", args=[rollout.pk]), {"action": "abort"}).status_code == 403
    client.force_login(operator)
    client.post(reverse("dashboard:rollout_action", args=[rollout.pk]), {"action": "abort"})
    rollout.refresh_from_db()
    assert rollout.state == "aborted"


def research_version(label):
    return WorkflowVersion.objects.get(workflow__name="research-agent", version=label)


def test_migrate_back_with_no_path_back_is_refused_at_start_in_service_cli_and_dashboard(synced, client, operator):
    """research-agent has migrations 2.0.0 -> 2.1.0 but none from 2.1.0 back to 2.0.0."""
    from django.core.management import call_command
    from django.core.management.base import CommandError
    from django.urls import reverse

    make_current(research_version("2.0.0"))
    before = (research_version("2.1.0").state, Rollout.objects.count(), AuditEvent.objects.count())
    expected = (
        "on_breach migrate_back needs a migration path from 2.1.0 back to 2.0.0: no migration path from 2.1.0 to "
        "2.0.0 in 'research-agent'"
    )
    with pytest.raises(ServiceError, match=expected) as refused:
        rollouts.start_rollout("research-agent", "2.1.0", strategy="linear", gates=GATES, on_breach="migrate_back")
    assert refused.value.field == "on_breach" and "or choose on_breach park or keep" in refused.value.message
    with pytest.raises(CommandError, match=rf"{expected}.*\[on_breach\]"):
        call_command(
            "workflows", "rollout", "start", "research-agent", "2.1.0", "--gate", "step_failure_rate<=0.1",
            "--on-breach", "migrate_back",
        )  # fmt: skip
    client.force_login(operator)
    response = client.post(
        reverse("dashboard:rollout_start", args=[research_version("2.1.0").pk]),
        {"strategy": "linear", "gates": "step_failure_rate<=0.1", "on_breach": "migrate_back"},
    )
    assert response.status_code == 400 and expected in response.content.decode().replace("&#x27;", "'")
    assert (research_version("2.1.0").state, Rollout.objects.count(), AuditEvent.objects.count()) == before
    # Parking or keeping needs no path: those plans start.
    rollout = rollouts.start_rollout("research-agent", "2.1.0", strategy="linear", gates=GATES, on_breach="park")
    assert rollout.current_percent == 10


@pytest.mark.django_db(transaction=True)
def test_a_halt_whose_migrate_back_fails_still_stops_the_ramp_and_records_the_failure(toy_on_v1, monkeypatch):
    """The path back was there at the start and is gone at the breach (a deploy dropped the migration):
    the halt commits the ramp at 0 first; the failed migrate-back is on the timeline and in the audit log."""
    from workflows_admin.engine import Version

    from . import workflows_for_tests
    from .worker import purge_broker

    t0 = timezone.now()
    try:
        rollout = rollouts.start_rollout(
            "toy", "2.0.0", strategy="linear", step_percent=20, gates=GATES, on_breach="migrate_back", now=t0
        )
        step_runs(10, "failed", t0 + timedelta(seconds=1))
        monkeypatch.delitem(workflows_for_tests.toy.migrations, (Version.parse("2.0.0"), Version.parse("1.0.0")))
        assert rollouts.tick(rollout.pk, now=t0 + timedelta(seconds=2)) == "halt"
    finally:
        purge_broker()  # the step tasks of the starts above: no worker runs in this test
    rollout.refresh_from_db()
    assert (rollout.state, rollout.current_percent) == ("halted", 0)
    assert (version("2.0.0").state, version("2.0.0").workflow.ramp_percent) == ("active", 0)
    assert MigrationBatch.objects.count() == 0
    assert list(rollout.events.values_list("decision", flat=True)) == ["verify", "start", "halt", "on_breach_failed"]
    failed = rollout.events.get(decision="on_breach_failed")
    assert failed.message.startswith("on_breach migrate_back failed: no migration path from 2.0.0 to 1.0.0")
    audited = AuditEvent.objects.get(action="rollout.on_breach_failed")
    assert audited.actor_label == "system:rollout" and "no migration path" in audited.message
    # Later ticks leave the halted rollout alone.
    assert rollouts.tick(rollout.pk, now=t0 + timedelta(seconds=40)) == "halted"
