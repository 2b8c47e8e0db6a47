"""Version lifecycle on PostgreSQL: ramped routing, draining, retirement, the missing-code guard,
patch-marker and step-version usage, and the lifecycle subcommands."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from workflows_admin.workflows import selectors
from workflows_admin.workflows.models import (
    AuditEvent,
    InstanceStatus,
    Patch,
    StepRun,
    Workflow,
    WorkflowInstance,
    WorkflowVersion,
)
from workflows_admin.workflows.runtime import get_registry
from workflows_admin.workflows.services import lifecycle
from workflows_admin.workflows.services.code_guard import resume_parked
from workflows_admin.workflows.services.errors import Conflict, InvalidInput, NotFound
from workflows_admin.workflows.services.instances import cancel_instance, start_workflow, start_workflows
from workflows_admin.workflows.services.steps import run_step

from . import workflows_for_tests
from .helpers import drain_steps, run_batch

pytestmark = pytest.mark.django_db
State = WorkflowVersion.State
BOTH_CONTRACTS = {"n": 0, "label": "x"}  # fits toy 1.0.0 and 2.0.0, so either may be routed


def toy_version(label):
    return WorkflowVersion.objects.get(workflow__name="toy", version=label)


def lifecycle_checksum() -> str:
    """Versions, workflows, instances and audit rows: a refused action must leave all of them as they were."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT md5(coalesce((SELECT string_agg(t::text, ',' ORDER BY t.id) FROM workflows_workflowversion t), '')"
            " || coalesce((SELECT string_agg(t::text, ',' ORDER BY t.id) FROM workflows_workflow t), '')"
            " || coalesce((SELECT string_agg(t::text, ',' ORDER BY t.id) FROM workflows_workflowinstance t), '')"
            " || (SELECT count(*) FROM workflows_auditevent)::text)"
        )
        return cursor.fetchone()[0]


@pytest.fixture
def toy_v1_current(synced):
    """toy 1.0.0 current, 2.0.0 drained (sync made it current first): the start of a rollout of 2.0.0."""
    lifecycle.make_current(toy_version("1.0.0"))
    return toy_version("1.0.0"), toy_version("2.0.0")


def test_ramp_at_20_percent_routes_about_a_fifth_of_10000_starts_by_start_key(toy_v1_current, operator):
    _, v2 = toy_v1_current
    lifecycle.set_ramp(v2, 20, actor=operator)
    keys = [f"order-{i}" for i in range(10_000)]
    started = start_workflows("toy", [BOTH_CONTRACTS] * len(keys), start_keys=keys)
    on_ramp = sum(1 for instance in started if instance.version_id == v2.pk)
    # Buckets are a hash of the key: Binomial(10000, 0.2) has sd 40, so +-300 is more than 7 sd.
    assert 1_700 <= on_ramp <= 2_300, on_ramp
    assert WorkflowInstance.objects.filter(version=v2).count() == on_ramp
    # A retried start (same key) lands on the same version.
    first_choice = {instance.start_key: instance.version_id for instance in started}
    retried = start_workflows("toy", [BOTH_CONTRACTS] * 500, start_keys=keys[:500])
    assert all(instance.version_id == first_choice[instance.start_key] for instance in retried)
    event = AuditEvent.objects.get(action="version.ramp_set")
    assert (event.actor_label, event.details) == ("operator", {"percent": 20, "previous_percent": 0})


def test_changing_current_or_ramp_never_moves_started_instances(toy_v1_current):
    v1, v2 = toy_v1_current
    lifecycle.set_ramp(v2, 50)
    started = start_workflows("toy", [BOTH_CONTRACTS] * 200, start_keys=[f"k{i}" for i in range(200)])
    before = dict(WorkflowInstance.objects.values_list("pk", "version_id"))
    assert set(before.values()) == {v1.pk, v2.pk}
    lifecycle.set_ramp(toy_version("2.0.0"), 90)
    lifecycle.set_ramp(toy_version("2.0.0"), 0)
    lifecycle.make_current(toy_version("2.0.0"))
    lifecycle.make_current(toy_version("1.0.0"))
    assert dict(WorkflowInstance.objects.values_list("pk", "version_id")) == before
    assert len(started) == 200


def test_set_ramp_rules_and_bad_input_change_nothing(toy_v1_current):
    v1, v2 = toy_v1_current
    before = lifecycle_checksum()
    for bad in (-1, 101, "\u0662\u0660", "+20", 2.5, True, None):  # text of ASCII digits is read, as typed in a form
        with pytest.raises(InvalidInput, match="percent must be a whole number from 0 to 100") as error:
            lifecycle.set_ramp(v2, bad)
        assert error.value.field == "percent"
    with pytest.raises(Conflict, match="is current .* cannot ramp"):
        lifecycle.set_ramp(v1, 10)
    with pytest.raises(Conflict, match="is not ramping"):
        lifecycle.set_ramp(v2, 0)
    assert lifecycle_checksum() == before

    lifecycle.set_ramp(v2, 10)
    lifecycle.set_ramp(v2, 30)  # changing the share of the ramping version is fine
    assert Workflow.objects.get(name="toy").ramp_percent == 30
    # Only one ramping version per workflow: a second one is refused, naming the first.
    WorkflowVersion.objects.create(
        workflow=v1.workflow, version="3.0.0", major=3, steps=v1.steps, state=State.ACTIVE, has_code=True
    )
    with pytest.raises(Conflict, match=r"toy 2.0.0 is already ramping at 30%; set its ramp to 0 first"):
        lifecycle.set_ramp(toy_version("3.0.0"), 5)
    lifecycle.set_ramp(v2, 0)
    assert toy_version("2.0.0").state == State.ACTIVE and Workflow.objects.get(name="toy").ramp_percent == 0
    # With no ramp every start goes to the current version.
    assert {i.version_id for i in start_workflows("toy", [BOTH_CONTRACTS] * 50)} == {v1.pk}
    lifecycle.retire(toy_version("3.0.0"))
    with pytest.raises(Conflict, match="toy 3.0.0 is retired; a retired version cannot ramp"):
        lifecycle.set_ramp(toy_version("3.0.0"), 5)


def test_making_the_ramping_version_current_ends_the_ramp(toy_v1_current):
    _, v2 = toy_v1_current
    lifecycle.set_ramp(v2, 25)
    lifecycle.make_current(v2)
    assert toy_version("2.0.0").state == State.CURRENT
    assert Workflow.objects.get(name="toy").ramp_percent == 0
    assert toy_version("1.0.0").state == State.DRAINED  # nothing was in flight on it


def test_a_draining_version_becomes_drained_when_its_last_instance_completes(toy_v1_current, settings):
    settings.WORKFLOWS_WARM_VERSIONS = 0  # nothing kept warm: a drained version can be retired at once
    v1, v2 = toy_v1_current
    first = start_workflow("toy", {"n": 0})
    second = start_workflow("toy", {"n": 0})
    lifecycle.make_current(v2)
    assert toy_version("1.0.0").state == State.DRAINING
    assert selectors.version_lifecycle(v1.workflow_id)[v1.pk] == {
        "in_flight": 2,
        "oldest_in_flight": first.created_at,
        "drained_at": None,
        "upgrades_to": None,  # pinned
        "will_upgrade": 0,
        "upgraded": 0,
    }
    drain_steps([first.pk])
    assert toy_version("1.0.0").state == State.DRAINING  # one still in flight
    drain_steps([second.pk])
    drained = toy_version("1.0.0")
    second.refresh_from_db()
    assert drained.state == State.DRAINED and drained.drained_at >= second.finished_at
    assert selectors.version_lifecycle()[v1.pk] == {
        "in_flight": 0,
        "oldest_in_flight": None,
        "drained_at": drained.drained_at,
        "upgrades_to": None,
        "will_upgrade": 0,
        "upgraded": 0,
    }
    assert AuditEvent.objects.filter(action="version.drained", actor_label="system:runtime", version=v1).count() == 1
    lifecycle.retire(drained)
    assert toy_version("1.0.0").state == State.RETIRED


def test_retiring_a_busy_version_is_refused_with_the_count_and_changes_nothing(toy_v1_current):
    _, v2 = toy_v1_current
    start_workflows("toy", [{"n": 0}] * 3)
    lifecycle.make_current(v2)
    before = lifecycle_checksum()
    with pytest.raises(Conflict, match="toy 1.0.0 still has 3 instance\\(s\\) in flight"):
        lifecycle.retire(toy_version("1.0.0"))
    assert lifecycle_checksum() == before
    assert toy_version("1.0.0").state == State.DRAINING


def test_a_missing_handler_parks_the_instance_and_a_deploy_with_the_code_resumes_it(synced, one_step_per_task):
    instance = start_workflow("toy", {"n": 0}, version="1.0.0")
    other = start_workflow("toy", {"n": 5}, version="1.0.0")
    get_registry().unregister("toy")  # a deploy removed the code too early
    try:
        assert run_step(instance.pk, 1) == "parked"
        assert run_step(other.pk, 1) == "parked"
        assert resume_parked() == {}  # no code here: nothing resumes, the flag stays
    finally:
        get_registry().register(workflows_for_tests.toy)
    v1 = toy_version("1.0.0")
    assert v1.code_missing_since is not None
    assert selectors.code_guard_flags()[v1.pk]["parked"] == 2

    cancel_instance(other.pk)  # an operator deals with one by hand; the other waits for the code
    out = call_command_json("sync")  # the deploy that brings the code back
    assert out["resumed"] == {"toy 1.0.0": 1}
    instance.refresh_from_db()
    assert (instance.status, instance.status_reason, instance.revision) == ("pending", "", 4)
    assert toy_version("1.0.0").code_missing_since is None and selectors.code_guard_flags() == {}
    event = AuditEvent.objects.get(action="instance.resumed")
    assert event.details == {"instance_ids": [instance.pk]} and event.actor_label.startswith("cli:")
    drain_steps()
    instance.refresh_from_db()
    assert instance.status == InstanceStatus.COMPLETED and instance.context["n"] == 2
    outcomes = list(instance.step_runs.order_by("id").values_list("step", "outcome"))
    assert outcomes == [("first", "parked"), ("first", "succeeded"), ("second", "succeeded")]


def test_the_periodic_resume_task_resumes_what_this_process_has_code_for(synced, one_step_per_task):
    from workflows_admin.workflows.services.schedules import PERIODIC_TASKS
    from workflows_admin.workflows.tasks import resume_parked_instances

    instance = start_workflow("toy", {"n": 0}, version="1.0.0")
    get_registry().unregister("toy")
    try:
        assert run_step(instance.pk, 1) == "parked"
        assert resume_parked_instances() == 0
    finally:
        get_registry().register(workflows_for_tests.toy)
    assert resume_parked_instances() == 1
    assert resume_parked_instances() == 0
    assert status_of(instance) == InstanceStatus.PENDING
    assert AuditEvent.objects.get(action="instance.resumed").actor_label == "system:resume"
    assert PERIODIC_TASKS["Resume parked instances"][0] == resume_parked_instances.name


def status_of(instance):
    return WorkflowInstance.objects.get(pk=instance.pk).status


def test_versions_without_code_and_instances_in_flight_are_flagged(synced):
    instance = start_workflow("toy", {"n": 0}, version="1.0.0")
    WorkflowVersion.objects.filter(pk=instance.version_id).update(has_code=False)
    flags = selectors.code_guard_flags()
    assert flags[instance.version_id]["in_flight_without_code"] == 1 and flags[instance.version_id]["parked"] == 0
    cancel_instance(instance.pk)
    assert selectors.code_guard_flags() == {}


def test_patch_usage_counts_in_flight_instances_on_each_branch(synced):
    workflow = Workflow.objects.get(name="toy")
    patch = Patch.objects.get(workflow=workflow, name="new-greeting")
    early = start_workflows("toy", [BOTH_CONTRACTS] * 3, version="2.0.0")
    Patch.objects.filter(pk=patch.pk).update(introduced_at=early[-1].created_at + timedelta(microseconds=1))
    late = start_workflows("toy", [BOTH_CONTRACTS] * 2, version="2.0.0")
    WorkflowInstance.objects.filter(pk__in=[late[0].pk, late[1].pk]).update(
        created_at=early[-1].created_at + timedelta(seconds=1)
    )
    # Decisions already recorded win over the start time: one early instance saw the new branch (it cannot
    # in the runtime, but the record is what counts), one late instance recorded the old one.
    WorkflowInstance.objects.filter(pk=early[0].pk).update(patches={"new-greeting": True})
    WorkflowInstance.objects.filter(pk=late[0].pk).update(patches={"new-greeting": False})
    finished = start_workflow("toy", BOTH_CONTRACTS, version="2.0.0")
    WorkflowInstance.objects.filter(pk=finished.pk).update(status=InstanceStatus.COMPLETED)
    # 1.0.0's code never checks the patch: its instances, started before it too, take neither branch.
    never_check = start_workflows("toy", [{"n": 0}] * 4, version="1.0.0")
    WorkflowInstance.objects.filter(pk__in=[i.pk for i in never_check]).update(created_at=early[0].created_at)

    v2 = toy_version("2.0.0")
    on_v2 = {"version": "2.0.0", "version_id": v2.pk, "old_branch_in_flight": 3, "new_branch_in_flight": 2}
    expected = {
        "name": "new-greeting",
        "description": patch.description,
        "introduced_at": early[-1].created_at + timedelta(microseconds=1),
        "old_branch_in_flight": 3,  # early[1], early[2] by start time; late[0] by its record
        "new_branch_in_flight": 2,  # early[0] by its record; late[1] by start time
        "versions": [on_v2],
    }
    assert selectors.patch_usage(workflow) == [expected]
    assert selectors.patch_usage(workflow, v2) == [expected]
    assert selectors.patch_usage(workflow, toy_version("1.0.0")) == []  # it checks no patch
    # Running them takes the branches the counts promised, and the old branch reaches 0.
    drain_steps()
    greetings = dict(WorkflowInstance.objects.values_list("pk", "context__greeting"))
    assert [greetings[i.pk] for i in early] == ["hello", "hi", "hi"]
    assert [greetings[i.pk] for i in late] == ["hi", "hello"]
    start_workflows("toy", [{"n": 0, "wait": True}] * 2, version="1.0.0")  # in flight on 1.0.0, still not counted
    assert selectors.patch_usage(workflow)[0]["old_branch_in_flight"] == 0


def test_patch_usage_counts_each_checking_version_on_its_own(synced):
    """Two versions check one patch: each is counted on its own instances, and their sum is the workflow's."""
    from workflows_admin.engine import Contract, WorkflowDef
    from workflows_admin.workflows.services.registry_sync import sync_registry

    definition = WorkflowDef("patchy")
    definition.patch("p")
    for label, checks in (("1.0.0", ()), ("2.0.0", ("p",)), ("3.0.0", ("p",))):
        definition.version(label, contract=Contract(), patches=checks).add_step("s", lambda ctx: ctx)
    get_registry().register(definition)
    try:
        sync_registry()
        workflow = Workflow.objects.get(name="patchy")
        assert dict(WorkflowVersion.objects.filter(workflow=workflow).values_list("version", "patches")) == {
            "1.0.0": [],
            "2.0.0": ["p"],
            "3.0.0": ["p"],
        }
        for label, n in (("1.0.0", 5), ("2.0.0", 1), ("3.0.0", 2)):
            start_workflows("patchy", [{}] * n, version=label)
        Patch.objects.filter(workflow=workflow).update(introduced_at=datetime.now(UTC))  # all started before it
        [usage] = selectors.patch_usage(workflow)
        assert [(v["version"], v["old_branch_in_flight"]) for v in usage["versions"]] == [("2.0.0", 1), ("3.0.0", 2)]
        assert (usage["old_branch_in_flight"], usage["new_branch_in_flight"]) == (3, 0)
        v2 = WorkflowVersion.objects.get(workflow=workflow, version="2.0.0")
        assert selectors.patch_usage(workflow, v2)[0]["old_branch_in_flight"] == 1
    finally:
        get_registry().unregister("patchy")


def test_live_step_versions_show_registered_and_past_step_versions(synced, one_step_per_task):
    v2 = toy_version("2.0.0")
    instances = start_workflows("toy", [BOTH_CONTRACTS] * 3, version="2.0.0")
    for instance in instances:
        run_step(instance.pk, 1)  # each now sits at "middle"
    StepRun.objects.create(
        instance=instances[0], version=v2, step="middle", step_version="1.1.0", claim_revision=1,
        outcome="succeeded", started_at=instances[0].created_at,
    )  # fmt: skip
    rows = selectors.live_step_versions(v2)
    assert rows == [
        {"step": "first", "step_version": "", "registered": True, "in_flight": 0, "runs": 3},
        {"step": "middle", "step_version": "1.2.0", "registered": True, "in_flight": 3, "runs": 0},
        {"step": "second", "step_version": "", "registered": True, "in_flight": 0, "runs": 0},
        {"step": "middle", "step_version": "1.1.0", "registered": False, "in_flight": 0, "runs": 1},
    ]


@pytest.fixture
def one_step_per_task(settings):
    settings.WORKFLOWS_STEP_CHAIN_SECONDS = 0


def call_command_json(*args):
    from io import StringIO

    out = StringIO()
    call_command("workflows", *args, "--json", stdout=out)
    return json.loads(out.getvalue())


def test_lifecycle_subcommands(synced):
    out = call_command_json("make-current", "toy", "1.0.0")
    assert (out["version"], out["state"]) == ("1.0.0", "current")
    out = call_command_json("ramp", "toy", "2.0.0", "15")
    assert (out["state"], out["ramp_percent"]) == ("ramping", 15)
    assert {v["version"]: v["state"] for v in out["versions"]} == {"1.0.0": "current", "2.0.0": "ramping"}
    out = call_command_json("ramp", "toy", "2.0.0", "0")
    assert (out["state"], out["ramp_percent"]) == ("active", 0)
    start_workflow("toy", BOTH_CONTRACTS, version="2.0.0")
    assert call_command_json("drain", "toy", "2.0.0")["state"] == "draining"
    event = AuditEvent.objects.filter(action="version.draining").latest("id")
    assert event.actor_label.startswith("cli:")


@pytest.mark.parametrize(
    "args, reason",
    [
        (["ramp", "toy", "2.0.0", "abc"], "percent must be a whole number from 0 to 100, got 'abc' [percent]"),
        (["ramp", "toy", "2.0.0", "120"], "percent must be a whole number from 0 to 100, got 120 [percent]"),
        (["ramp", "toy", "2.1.0", "5"], "workflow 'toy' has no version 2.1.0 (known: 1.0.0, 2.0.0) [version]"),
        (["drain", "nope", "1.0.0"], "unknown workflow 'nope'"),
        (["retire", "toy", "latest"], "not a semantic version"),
        (["retire", "toy", "2.0.0"], "toy 2.0.0 is current; make another version current before retiring it"),
        (["make-current", "toy", "2.0.0"], "toy 2.0.0 is already current [version]"),
    ],
)
def test_lifecycle_subcommands_refuse_bad_input_with_one_line(synced, args, reason):
    before = lifecycle_checksum()
    with pytest.raises(CommandError) as error:
        call_command("workflows", *args, "--json")
    assert reason in str(error.value) and "\n" not in str(error.value)
    assert error.value.returncode != 0
    assert lifecycle_checksum() == before


def test_get_version_names_the_field():
    with pytest.raises(NotFound) as error:
        lifecycle.get_version("nope", "1.0.0")
    assert error.value.field == "workflow"


def test_lifecycle_reads_take_a_fixed_number_of_queries(synced, django_assert_num_queries):
    workflow = Workflow.objects.get(name="toy")
    start_workflows("toy", [BOTH_CONTRACTS] * 30, version="2.0.0")
    start_workflows("toy", [{"n": 0}] * 30, version="1.0.0")
    # The versions (with their upgrade targets), the auto-upgrade batches' sums, the counters, one
    # probe query for the oldest starts: none of them grows with the instances.
    with django_assert_num_queries(4):
        selectors.version_lifecycle()
    with django_assert_num_queries(3):  # the patches, the versions, one aggregate for all of them
        selectors.patch_usage(workflow)
    v2 = toy_version("2.0.0")
    with django_assert_num_queries(2):  # the patches, one aggregate on the version
        selectors.patch_usage(workflow, v2)
    with django_assert_num_queries(2):  # runs per step version, in-flight instances per step
        selectors.live_step_versions(v2)


def test_the_newest_versions_before_current_are_kept_warm(synced, settings):
    from workflows_admin.workflows.services.errors import Conflict

    assert toy_version("2.0.0").state == "current"  # the sync made the newest version current
    settings.WORKFLOWS_WARM_VERSIONS = 1
    with pytest.raises(Conflict, match="kept warm as a rollback target"):
        lifecycle.retire(toy_version("1.0.0"))
    assert toy_version("1.0.0").state != "retired"
    settings.WORKFLOWS_WARM_VERSIONS = 0
    assert lifecycle.retire(toy_version("1.0.0")).state == "retired"


def test_a_drained_version_that_receives_instances_back_is_draining_again(toy_v1_current, operator):
    """Drained means nothing in flight: a migration empties 1.0.0, its rollback moves them back."""
    from workflows_admin.workflows.services.batches import start_migration, start_rollback

    v1, _ = toy_v1_current
    started = start_workflows("toy", [{"n": 0}] * 3)
    lifecycle.make_current(toy_version("2.0.0"))
    assert toy_version("1.0.0").state == State.DRAINING
    migration = run_batch(start_migration("toy", source="1.0.0", target="2.0.0", actor=operator))
    assert migration.succeeded == 3
    assert toy_version("1.0.0").state == State.DRAINED
    drained = AuditEvent.objects.get(action="version.drained", version=v1)
    assert drained.message == f"toy 1.0.0 is drained: migration #{migration.pk} moved its last in-flight instances away"
    assert "finished" not in drained.message

    rollback = run_batch(start_rollback(migration.pk, actor=operator))
    assert rollback.succeeded == 3
    assert WorkflowInstance.objects.filter(pk__in=[i.pk for i in started], version=v1).count() == 3
    reopened = toy_version("1.0.0")
    assert (reopened.state, reopened.drained_at) == (State.DRAINING, None)
    event = AuditEvent.objects.filter(action="version.draining", version=v1).latest("id")
    assert event.actor_label == "system:batches" and f"rollback #{rollback.pk}" in event.message
    assert event.details == {"in_flight": 3, "batch": rollback.pk}
    with pytest.raises(Conflict, match="already draining"):
        lifecycle.drain(reopened)
    # And it drains again, the normal way, when they finish.
    drain_steps([i.pk for i in started])
    assert toy_version("1.0.0").state == State.DRAINED
    assert AuditEvent.objects.filter(action="version.drained", version=v1).latest("id").message == (
        "toy 1.0.0 is drained: its last in-flight instance finished"
    )


def test_instances_restored_as_failed_leave_a_drained_version_drained(toy_v1_current, operator):
    """Only instances in flight reopen a version: a rollback that restores failed ones does not."""
    from workflows_admin.workflows.services.batches import start_migration, start_rollback

    started = start_workflows("toy", [{"n": 0}] * 2)
    WorkflowInstance.objects.filter(pk__in=[i.pk for i in started]).update(status=InstanceStatus.FAILED)
    lifecycle.make_current(toy_version("2.0.0"))
    assert toy_version("1.0.0").state == State.DRAINED  # failed is not in flight
    migration = run_batch(
        start_migration("toy", source="1.0.0", target="2.0.0", selection={"statuses": ["failed"]}, actor=operator)
    )
    assert migration.succeeded == 2
    rollback = run_batch(start_rollback(migration.pk, actor=operator))
    assert rollback.succeeded == 2
    assert set(WorkflowInstance.objects.filter(pk__in=[i.pk for i in started]).values_list("status", flat=True)) == {
        InstanceStatus.FAILED
    }
    assert toy_version("1.0.0").state == State.DRAINED
    assert not AuditEvent.objects.filter(action="version.draining").exists()


def test_drain_audits_draining_and_drained_apart(toy_v1_current, operator):
    _, v2 = toy_v1_current
    lifecycle.set_ramp(v2, 10)
    lifecycle.set_ramp(v2, 0)
    start_workflow("toy", BOTH_CONTRACTS, version="2.0.0")
    lifecycle.drain(v2, actor=operator)
    event = AuditEvent.objects.filter(version=v2).latest("id")
    assert (event.action, event.message) == ("version.draining", "toy 2.0.0 is draining: 1 instance(s) in flight")
    assert not AuditEvent.objects.filter(action="version.drained", version=v2).exists()


@pytest.mark.django_db(transaction=True)
def test_a_start_racing_a_drain_never_lands_on_the_drained_version(synced):
    """drain() counts in flight under its lock; a start that read the version's state before that lock
    must not insert onto it afterwards (the version would show drained with an instance in flight)."""
    import threading
    import time

    from django.db import transaction

    lifecycle.make_current(toy_version("1.0.0"))
    lifecycle.set_ramp(toy_version("2.0.0"), 10)
    v2 = lifecycle.set_ramp(toy_version("2.0.0"), 0)
    assert v2.state == State.ACTIVE
    locked, outcome = threading.Event(), {}

    def start():
        locked.wait()
        try:
            outcome["instance"] = start_workflow("toy", BOTH_CONTRACTS, version="2.0.0")
        except Conflict as exc:
            outcome["refused"] = exc.message
        finally:
            connection.close()

    thread = threading.Thread(target=start)
    thread.start()
    with transaction.atomic():
        lifecycle.drain(v2)  # nothing in flight: drained, committed when this block ends
        locked.set()
        time.sleep(1)  # the start reads the versions and waits on the lock meanwhile
    thread.join()
    v2 = toy_version("2.0.0")
    in_flight = WorkflowInstance.objects.filter(version=v2, status__in=["pending", "running"]).count()
    assert (v2.state, in_flight) == (State.DRAINED, 0)
    assert "toy 2.0.0 is drained and takes no new starts" in outcome["refused"]
