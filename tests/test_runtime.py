"""Starting instances and running their steps, on PostgreSQL, through the services the tasks call."""

import json

import pytest
from django.db import connection

from workflows_admin.workflows.models import (
    AuditEvent,
    InstanceStatus,
    StepRun,
    WorkflowInstance,
    WorkflowVersion,
)
from workflows_admin.workflows.services import lifecycle
from workflows_admin.workflows.services.errors import Conflict, InvalidInput, NotFound
from workflows_admin.workflows.services.instances import signal_workflow, start_workflow
from workflows_admin.workflows.services.steps import ClaimBusy, recover_stalled_steps, run_step

from .helpers import drain_steps

pytestmark = pytest.mark.django_db


@pytest.fixture
def one_step_per_task(settings):
    """Turn step chaining off, so one run_step call runs exactly one step."""
    settings.WORKFLOWS_STEP_CHAIN_SECONDS = 0


def toy_version(label):
    return WorkflowVersion.objects.get(workflow__name="toy", version=label)


def table_checksum() -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t.id), '')) FROM workflows_workflowinstance t"
        )
        instances = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM workflows_steprun")
        return f"{instances}:{cursor.fetchone()[0]}"


def test_instances_run_with_their_own_versions_handlers(synced):
    lifecycle.make_current(toy_version("1.0.0"))
    old = start_workflow("toy", {"n": 0})
    lifecycle.make_current(toy_version("2.0.0"))
    new = start_workflow("toy", {"n": 0, "label": "x"})
    assert (old.version.version, new.version.version) == ("1.0.0", "2.0.0")
    drain_steps()
    old.refresh_from_db()
    new.refresh_from_db()
    assert old.status == new.status == InstanceStatus.COMPLETED
    assert old.context["trace"] == ["v1.first", "v1.second"] and old.context["n"] == 2
    assert new.context["trace"] == ["v2.first", "v2.middle", "v2.second"] and new.context["n"] == 20
    assert list(new.step_runs.order_by("id").values_list("step", "step_version")) == [
        ("first", ""),
        ("middle", "1.2.0"),
        ("second", ""),
    ]
    assert toy_version("1.0.0").state == WorkflowVersion.State.DRAINED


def test_a_duplicated_step_task_runs_the_step_once(synced, one_step_per_task):
    instance = start_workflow("toy", {"n": 0, "label": "x"}, version="1.0.0")
    assert run_step(instance.pk, 1) == "advanced"
    assert run_step(instance.pk, 1) == "stale"
    instance.refresh_from_db()
    assert instance.context["n"] == 1
    assert StepRun.objects.filter(instance=instance).count() == 1


def test_a_concurrent_duplicate_waits_for_the_live_lease(synced, one_step_per_task):
    from workflows_admin.workflows.services.steps import _claim

    instance = start_workflow("toy", {"n": 0}, version="1.0.0")
    claim = _claim(instance.pk, 1)
    with pytest.raises(ClaimBusy):
        run_step(instance.pk, 1)
    # The lease expires (worker died): the redelivered task takes over, the dead claim is abandoned.
    WorkflowInstance.objects.filter(pk=instance.pk).update(lease_expires_at="2000-01-01T00:00Z")
    assert run_step(instance.pk, 1) == "advanced"
    outcomes = list(StepRun.objects.filter(instance=instance).order_by("id").values_list("outcome", flat=True))
    assert outcomes == ["abandoned", "succeeded"]
    # The original claimant comes back late: its result is discarded, not written.
    from workflows_admin.workflows.services.steps import Outcome, _record

    assert _record(claim, Outcome(context={"n": 999})) == "discarded"
    instance.refresh_from_db()
    assert instance.context["n"] == 1


def test_quick_steps_chain_in_one_task_each_claimed_and_recorded(synced):
    instance = start_workflow("toy", {"n": 0}, version="1.0.0")
    assert run_step(instance.pk, 1) == "completed"
    runs = list(instance.step_runs.order_by("id").values_list("step", "claim_revision", "outcome"))
    assert runs == [("first", 2, "succeeded"), ("second", 3, "succeeded")]
    instance.refresh_from_db()
    assert (instance.status, instance.revision, instance.context["n"]) == ("completed", 4, 2)


def test_a_chain_stops_when_the_instance_changes_under_it(synced):
    from workflows_admin.workflows.services.steps import _claim, _execute, _write_result

    instance = start_workflow("toy", {"n": 0}, version="1.0.0")
    claim = _claim(instance.pk, 1)
    result, next_claim = _write_result(claim, _execute(claim), chain=True)
    assert result == "advanced" and next_claim.step == "second"
    instance.refresh_from_db()
    assert (instance.status, instance.current_step) == ("running", "second")  # claimed with the write
    # An operator cancels while the chained step runs: its result is discarded.
    from workflows_admin.workflows.services.instances import cancel_instance

    cancel_instance(instance.pk)
    assert _write_result(next_claim, _execute(next_claim), chain=True) == ("discarded", None)
    instance.refresh_from_db()
    assert instance.status == "cancelled" and instance.context["n"] == 1


def test_a_failing_step_is_retried_then_recorded(synced):
    flaky = start_workflow("toy", {"n": 0, "fail_times": 1}, version="1.0.0")
    broken = start_workflow("toy", {"n": 0, "fail_times": 99}, version="1.0.0")
    drain_steps()
    flaky.refresh_from_db()
    broken.refresh_from_db()
    assert flaky.status == InstanceStatus.COMPLETED
    assert broken.status == InstanceStatus.FAILED
    assert "planned failure on attempt 3" in broken.status_reason
    outcomes = list(broken.step_runs.order_by("id").values_list("outcome", flat=True))
    assert outcomes == ["retrying", "retrying", "failed"]  # max_retries=2: three attempts in all
    assert "RuntimeError" in broken.step_runs.order_by("id").last().error


def _returns(result):
    return lambda ctx: {**ctx, **result}


def _raises(ctx):
    raise RuntimeError("the author's message quotes \ud800 and \x00")


@pytest.mark.parametrize(
    "handler, reason",
    [
        (_returns({"notes": [{"t": "bad \udc00"}]}), "holds a lone UTF-16 surrogate at notes/0/t"),
        (_returns({"\ud800": 1}), "holds a lone UTF-16 surrogate in the key '\\ud800' at (root)"),
        (_raises, "RuntimeError: the author's message quotes \\ud800 and \\x00"),  # kept, escaped
    ],
)
def test_a_step_result_or_error_holding_a_lone_surrogate_fails_its_instance_only(synced, monkeypatch, handler, reason):
    import dataclasses

    from .workflows_for_tests import toy_v1

    monkeypatch.setattr(toy_v1, "steps", [dataclasses.replace(toy_v1.steps[0], handler=handler), *toy_v1.steps[1:]])
    broken = start_workflow("toy", {"n": 0}, version="1.0.0")
    fine = start_workflow("toy", {"n": 5, "label": "x"}, version="2.0.0")
    drain_steps([broken.pk, fine.pk])
    broken.refresh_from_db()
    fine.refresh_from_db()
    assert (broken.status, broken.context) == ("failed", {"n": 0})
    assert reason in broken.status_reason
    assert reason in StepRun.objects.filter(instance=broken).latest("id").error
    assert fine.status == "completed"


def test_wait_and_signal(synced, operator):
    instance = start_workflow("toy", {"n": 0, "wait": True}, version="1.0.0")
    drain_steps()
    instance.refresh_from_db()
    assert (instance.status, instance.current_step, instance.status_reason) == ("waiting", "second", "needs approval")
    with pytest.raises(InvalidInput, match="payload"):
        signal_workflow(instance.pk, ["not", "a", "dict"])
    signal_workflow(instance.pk, {"approved_by": "alice"}, actor=operator)
    instance.refresh_from_db()
    assert instance.status == InstanceStatus.COMPLETED and instance.context["approved_by"] == "alice"
    assert AuditEvent.objects.get(action="instance.signalled").actor_label == "operator"
    with pytest.raises(Conflict, match="not waiting"):
        signal_workflow(instance.pk, {"again": True})


def test_bad_starts_raise_clear_errors_and_write_nothing(synced):
    before = table_checksum()
    with pytest.raises(NotFound, match="unknown workflow 'nope'"):
        start_workflow("nope", {"n": 1})
    with pytest.raises(NotFound, match="has no version 9.9.9"):
        start_workflow("toy", {"n": 1}, version="9.9.9")
    with pytest.raises(InvalidInput, match="not a semantic version"):
        start_workflow("toy", {"n": 1}, version="latest")
    with pytest.raises(InvalidInput, match="missing required field 'label'") as error:
        start_workflow("toy", {"n": 1}, version="2.0.0")
    assert error.value.field == "context"
    with pytest.raises(InvalidInput, match="JSON object"):
        start_workflow("toy", "not a dict")
    with pytest.raises(InvalidInput, match="not JSON-serialisable"):
        start_workflow("toy", {"n": float("nan")})
    with pytest.raises(InvalidInput, match="over the limit"):
        start_workflow("toy", {"n": 1, "blob": "x" * 2_000_000}, version="1.0.0")
    lifecycle.make_current(toy_version("1.0.0"))
    lifecycle.retire(toy_version("2.0.0"))
    with pytest.raises(Conflict, match="retired and takes no new starts"):
        start_workflow("toy", {"n": 1, "label": "x"}, version="2.0.0")
    assert table_checksum() == before


def test_patch_markers_follow_the_start_time(synced):
    from workflows_admin.workflows.models import Patch

    before_patch = start_workflow("toy", {"n": 0, "label": "x"}, version="2.0.0")
    Patch.objects.filter(name="new-greeting").update(introduced_at=before_patch.created_at.replace(year=2100))
    drain_steps()
    before_patch.refresh_from_db()
    assert before_patch.context["greeting"] == "hi"
    assert before_patch.patches == {"new-greeting": False}
    Patch.objects.filter(name="new-greeting").update(introduced_at="2000-01-01T00:00Z")
    after_patch = start_workflow("toy", {"n": 0, "label": "x"}, version="2.0.0")
    drain_steps()
    after_patch.refresh_from_db()
    assert after_patch.context["greeting"] == "hello" and after_patch.patches == {"new-greeting": True}


def test_missing_code_parks_the_instance(synced):
    from workflows_admin.workflows.runtime import get_registry

    from . import workflows_for_tests

    instance = start_workflow("toy", {"n": 0}, version="1.0.0")
    get_registry().unregister("toy")
    try:
        assert run_step(instance.pk, 1) == "parked"
    finally:
        get_registry().register(workflows_for_tests.toy)
    instance.refresh_from_db()
    assert instance.status == InstanceStatus.PARKED and "no code for toy 1.0.0" in instance.status_reason
    assert toy_version("1.0.0").code_missing_since is not None
    assert instance.context == {"n": 0}


def test_recovery_resends_expired_leases(synced, one_step_per_task):
    instance = start_workflow("toy", {"n": 0}, version="1.0.0")
    WorkflowInstance.objects.filter(pk=instance.pk).update(
        status=InstanceStatus.RUNNING, revision=2, lease_expires_at="2000-01-01T00:00Z"
    )
    assert recover_stalled_steps() == 1
    assert run_step(instance.pk, 2) == "advanced"


def test_contexts_round_trip_as_json(synced):
    instance = start_workflow("toy", {"n": 0, "nested": {"b": [1, 2], "a": "é"}}, version="1.0.0")
    instance.refresh_from_db()
    assert json.dumps(instance.context, sort_keys=True) == json.dumps(
        {"n": 0, "nested": {"b": [1, 2], "a": "é"}}, sort_keys=True
    )


@pytest.mark.parametrize("one_statement", [True, False], ids=["one-statement", "portable"])
def test_both_result_paths_write_the_same(synced, monkeypatch, one_statement):
    """PostgreSQL writes a result in one statement; other databases in a transaction: same effect."""
    from workflows_admin.workflows.services import steps
    from workflows_admin.workflows.services.instances import cancel_instance

    monkeypatch.setattr(steps, "ONE_STATEMENT_RESULTS", one_statement)
    done = start_workflow("toy", {"n": 0, "fail_times": 1}, version="1.0.0")
    drain_steps()
    done.refresh_from_db()
    assert (done.status, done.context["n"], done.revision) == ("completed", 2, 6)
    assert list(done.step_runs.order_by("id").values_list("step", "outcome", "claim_revision")) == [
        ("first", "retrying", 2),
        ("first", "succeeded", 4),
        ("second", "succeeded", 5),
    ]
    changed = start_workflow("toy", {"n": 0}, version="1.0.0")
    claim = steps._claim(changed.pk, 1)
    cancel_instance(changed.pk)
    assert steps._record(claim, steps._execute(claim)) == "discarded"
    discarded = changed.step_runs.get()
    assert discarded.outcome == "discarded" and "result discarded" in discarded.error


@pytest.mark.django_db(transaction=True)
def test_a_long_step_keeps_its_lease_renewed(synced, one_step_per_task, settings):
    """The process's lease keeper renews the lease while the handler runs, so no one takes the step over."""
    import threading

    settings.WORKFLOWS_STEP_LEASE_SECONDS = 1.5  # renewed every 0.5 s
    instance = start_workflow("toy", {"n": 0, "sleep": 2.5}, version="1.0.0")
    assert run_step(instance.pk, 1) == "advanced"  # "first"; "second" sleeps 2.5 s, past its lease
    instance.refresh_from_db()
    outcome = []
    runner = threading.Thread(
        target=lambda revision=instance.revision: (outcome.append(run_step(instance.pk, revision)), connection.close())
    )
    runner.start()
    leases = []
    while runner.is_alive():
        instance.refresh_from_db()
        if instance.status == InstanceStatus.RUNNING:
            leases.append(instance.lease_expires_at)
        runner.join(timeout=0.3)
    assert outcome == ["completed"]
    assert len(set(leases)) >= 3  # claimed, then renewed at least twice
    assert not StepRun.objects.filter(instance=instance, outcome=StepRun.Outcome.ABANDONED).exists()
