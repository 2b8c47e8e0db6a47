"""Upgrade policies: an auto-upgrade version's instances move to the current version at their
step boundaries, in the transaction that records the step; waiting ones by the periodic sweep."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command

from workflows_admin.engine import RegistrationError, Workflow
from workflows_admin.workflows.models import AuditEvent, BatchItem, MigrationBatch, StepRun, WorkflowInstance
from workflows_admin.workflows.models import WorkflowVersion as Version
from workflows_admin.workflows.services import batches, lifecycle, steps, upgrades
from workflows_admin.workflows.services.errors import InvalidInput
from workflows_admin.workflows.services.instances import start_workflow

from .helpers import drain_steps, run_batch, waiting_instances


def version(label: str) -> Version:
    return Version.objects.get(workflow__name="toy", version=label)


@pytest.fixture
def auto(synced, settings):
    settings.WORKFLOWS_STEP_CHAIN_SECONDS = 0
    return upgrades.set_upgrade_policy(version("1.0.0"), "auto", actor="cli:test")


def run_one_step(instance) -> str:
    revision = WorkflowInstance.objects.get(pk=instance.pk).revision
    claim = steps._claim(instance.pk, revision)
    return steps._record(claim, steps._execute(claim))


def test_the_policy_points_an_auto_version_at_the_current_one_and_is_audited(auto):
    assert (auto.upgrade_policy, auto.upgrade_to.version) == ("auto", "2.0.0")
    event = AuditEvent.objects.get(action="version.upgrade_policy")
    assert event.actor_label == "cli:test" and event.details == {"previous": "pinned", "policy": "auto"}
    assert version("2.0.0").upgrade_to is None  # the current version has nowhere newer to go
    with pytest.raises(InvalidInput) as refused:
        upgrades.set_upgrade_policy(version("1.0.0"), "sometimes")
    assert refused.value.field == "upgrade_policy"


def test_an_instance_moves_at_its_step_boundary_with_the_steps_result(auto):
    instance = start_workflow("toy", {"n": 0}, version="1.0.0")
    run_one_step(instance)  # "first" of 1.0.0, then the boundary
    instance.refresh_from_db()
    assert (instance.version.version, instance.current_step, instance.status) == ("2.0.0", "second", "pending")
    assert instance.context == {"n": 1, "trace": ["v1.first"], "label": "n=1"}
    batch = MigrationBatch.objects.get(auto_upgrade=True)
    assert (batch.state, batch.total, batch.succeeded, batch.source_version.version) == ("running", 1, 1, "1.0.0")
    item = BatchItem.objects.get(batch=batch)
    assert (item.from_step, item.from_context) == ("second", {"n": 1, "trace": ["v1.first"]})
    drain_steps([instance.pk])
    instance.refresh_from_db()
    assert instance.context["trace"] == ["v1.first", "v2.second"]  # no step ran twice
    assert StepRun.objects.filter(instance=instance, outcome="discarded").count() == 0


def test_once_its_route_is_known_a_boundary_upgrade_is_one_statement_and_drains_the_version(
    auto, django_assert_max_num_queries
):
    first, second, last = (start_workflow("toy", {"n": 0}, version="1.0.0") for _ in range(3))
    lifecycle.drain(version("1.0.0"))
    run_one_step(first)  # the general path: this process learns the version's target and batch
    claim = steps._claim(second.pk, second.revision)
    outcome = steps._execute(claim)
    with django_assert_max_num_queries(2):  # the statement, and the drained probe (1.0.0 is draining, not empty)
        assert steps._record(claim, outcome) == "advanced; auto-upgraded to 2.0.0"
    second.refresh_from_db()
    assert (second.version.version, second.current_step, second.status) == ("2.0.0", "second", "pending")
    assert second.context == {"n": 1, "trace": ["v1.first"], "label": "n=1"}
    assert second.revision == claim.revision + 2  # the step's result, then the move, as on the general path
    item = BatchItem.objects.get(instance=second)
    assert (item.state, item.from_step, item.from_status, item.from_context, item.to_step) == (
        "succeeded",
        "second",
        "pending",
        {"n": 1, "trace": ["v1.first"]},
        "second",
    )
    assert (item.expected_revision, item.revision_after) == (claim.revision + 1, second.revision)
    assert list(StepRun.objects.filter(instance=second).values_list("step", "outcome")) == [("first", "succeeded")]
    assert version("1.0.0").state == "draining"
    assert run_one_step(last) == "advanced; auto-upgraded to 2.0.0"
    batch = MigrationBatch.objects.get(auto_upgrade=True)
    counted = (batch.items.count(), batch.items.filter(state="succeeded").count())
    assert (batch.total, batch.succeeded) == (3, 3) == counted
    assert version("1.0.0").state == "drained"  # its last in-flight instance left with that statement


def test_a_failing_migrator_on_the_one_statement_path_is_recorded_once(auto, settings):
    first, poisoned = (start_workflow("toy", ctx, version="1.0.0") for ctx in ({"n": 0}, {"n": 0, "poison": True}))
    run_one_step(first)  # learns the route
    assert run_one_step(poisoned) == "advanced"  # written as the step left it, on 1.0.0
    poisoned.refresh_from_db()
    assert (poisoned.version.version, poisoned.current_step, poisoned.context["n"]) == ("1.0.0", "second", 1)
    assert run_one_step(poisoned) == "completed"  # its next boundary does not try again
    item = BatchItem.objects.get(instance=poisoned)
    assert item.state == "failed" and "poisoned context" in item.error
    batch = MigrationBatch.objects.get(auto_upgrade=True)
    assert (batch.total, batch.succeeded, batch.failed) == (2, 1, 1)


def test_a_pinned_version_keeps_its_instances(synced, settings):
    settings.WORKFLOWS_STEP_CHAIN_SECONDS = 0
    instance = start_workflow("toy", {"n": 0}, version="1.0.0")
    assert run_one_step(instance) == "advanced"
    assert WorkflowInstance.objects.get(pk=instance.pk).version.version == "1.0.0"
    assert not MigrationBatch.objects.filter(auto_upgrade=True).exists()


def test_a_failing_migrator_is_recorded_once_and_the_instance_goes_on_where_it_was(auto):
    instance = start_workflow("toy", {"n": 0, "poison": True}, version="1.0.0")
    run_one_step(instance)
    run_one_step(instance)  # a second boundary: not tried again
    instance.refresh_from_db()
    assert (instance.version.version, instance.status) == ("1.0.0", "completed")
    item = BatchItem.objects.get(batch__auto_upgrade=True)
    assert item.state == "failed" and "poisoned context" in item.error


def test_the_sweep_moves_waiting_instances_and_the_batch_ends_when_the_version_is_empty(auto):
    waiting_instances(7)
    assert upgrades.sweep_auto_upgrades(chunk=3) == 7
    assert set(WorkflowInstance.objects.values_list("version__version", "status")) == {("2.0.0", "waiting")}
    upgrades.sweep_auto_upgrades()
    batch = MigrationBatch.objects.get(auto_upgrade=True)
    assert (batch.state, batch.total, batch.succeeded) == ("completed", 7, 7)


def test_pinning_again_ends_the_auto_batch_and_its_moves_can_be_rolled_back(auto):
    waiting_instances(3)
    upgrades.sweep_auto_upgrades()
    out = StringIO()
    call_command("workflows", "upgrade-policy", "toy", "1.0.0", "pinned", "--json", stdout=out)
    assert json.loads(out.getvalue())["upgrade_policy"] == "pinned"
    batch = MigrationBatch.objects.get(auto_upgrade=True)
    assert batch.state == "completed" and version("1.0.0").upgrade_to is None
    rollback = batches.start_rollback(batch.pk)
    run_batch(rollback.pk)
    assert set(WorkflowInstance.objects.values_list("version__version", flat=True)) == {"1.0.0"}


def test_making_a_newer_version_current_points_auto_versions_at_it(synced):
    upgrades.set_upgrade_policy(version("1.0.0"), "auto")
    lifecycle.make_current(version("1.0.0"))  # back to 1.0.0: nothing newer is current
    assert version("1.0.0").upgrade_to is None
    lifecycle.make_current(version("2.0.0"))
    assert version("1.0.0").upgrade_to.version == "2.0.0"


def test_the_policy_is_declared_in_code():
    flow = Workflow("declared")
    assert flow.version("1.0.0", upgrade="auto").upgrade == "auto"
    with pytest.raises(RegistrationError, match="upgrade must be one of pinned, auto"):
        flow.version("2.0.0", upgrade="always")


def test_the_version_page_and_overview_show_the_policy_and_an_operator_sets_it(synced, client, operator):
    from django.urls import reverse

    waiting_instances(4)
    client.force_login(operator)
    v1 = version("1.0.0")
    response = client.post(
        reverse("dashboard:version_lifecycle", args=[v1.pk]), {"action": "upgrade_policy", "policy": "auto"}
    )
    assert response.status_code == 302
    page = client.get(reverse("dashboard:version", args=[v1.pk])).content.decode()
    assert "4 in-flight instances will move to 2.0.0 at their next step boundary" in page
    assert "auto → 2.0.0: 4 to move, 0 moved" in client.get(reverse("dashboard:overview")).content.decode()
    upgrades.sweep_auto_upgrades()
    assert "auto → 2.0.0: 0 to move, 4 moved" in client.get(reverse("dashboard:overview")).content.decode()
    bad = client.post(reverse("dashboard:version_lifecycle", args=[v1.pk]), {"action": "upgrade_policy", "policy": "x"})
    assert bad.status_code == 400 and "upgrade policy must be one of" in bad.content.decode()
