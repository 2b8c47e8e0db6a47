"""Four eyes: a batch over WORKFLOWS_APPROVAL_THRESHOLD instances waits for a second user's approval."""

import getpass
import json
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from workflows_admin.workflows import rules
from workflows_admin.workflows.cli import exit_codes
from workflows_admin.workflows.models import AuditEvent, BatchItem, MigrationBatch, WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.services import batches, cleanup
from workflows_admin.workflows.services.errors import Conflict, InvalidInput

from .helpers import run_batch, waiting_instances

pytestmark = pytest.mark.django_db
State = MigrationBatch.State


def user(django_user_model, name: str, *codenames: str):
    person = django_user_model.objects.create_user(name, password=f"pw-{name}-12345")
    person.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return django_user_model.objects.get(pk=person.pk)  # fresh: no permission cache


@pytest.fixture
def people(synced, django_user_model, settings):
    settings.WORKFLOWS_APPROVAL_THRESHOLD = 5
    return {
        "alice": user(django_user_model, "alice", "migrate_instances", "approve_migrations"),
        "bob": user(django_user_model, "bob", "approve_migrations"),
        "carol": user(django_user_model, "carol", "migrate_instances"),
    }


def confirmed(actor, n: int = 6) -> MigrationBatch:
    waiting_instances(n)
    preview = batches.preview_migration("toy", source="1.0.0", target="2.0.0", freeze=True, actor=actor)
    return batches.start_migration(
        "toy", source="1.0.0", target="2.0.0", selection_token=preview.selection_token, actor=actor
    )


def actions(batch) -> list[tuple[str, str]]:
    return list(AuditEvent.objects.filter(batch=batch).order_by("pk").values_list("action", "actor_label"))


def test_over_the_threshold_a_confirmed_preview_waits_and_a_second_user_approval_starts_it(people):
    alice, bob = people["alice"], people["bob"]
    batch = confirmed(alice)
    assert (batch.state, batch.requested_by, batch.total) == (State.AWAITING_APPROVAL, "alice", 6)
    assert batches.process_chunk(batch.pk) == State.AWAITING_APPROVAL  # a stray chunk task does nothing
    assert WorkflowInstance.objects.filter(version__version="1.0.0").count() == 6

    with pytest.raises(Conflict, match="alice requested batch .* cannot approve it; a second user"):
        batches.approve_batch(batch.pk, approver=alice)
    with pytest.raises(Conflict, match="needs the permission approve_migrations"):
        batches.approve_batch(batch.pk, approver=people["carol"])
    batch.refresh_from_db()
    assert batch.state == State.AWAITING_APPROVAL

    approved = batches.approve_batch(batch.pk, approver=bob)
    assert approved.state == State.RUNNING
    assert run_batch(approved).state == State.COMPLETED
    assert WorkflowInstance.objects.filter(version__version="2.0.0").count() == 6
    assert actions(batch) == [
        ("batch.approval_requested", "alice"),
        ("batch.approved", "bob"),
        ("batch.started", "bob"),
        ("batch.finished", "system:batches"),
    ]
    requested = AuditEvent.objects.get(batch=batch, action="batch.approval_requested")
    assert requested.details["threshold"] == 5 and requested.details["total"] == 6
    with pytest.raises(Conflict, match="only a batch awaiting approval can be approved"):
        batches.approve_batch(batch.pk, approver=bob)


def test_whoever_previewed_cannot_approve_what_another_confirmed(people):
    waiting_instances(6)
    preview = batches.preview_migration("toy", source="1.0.0", target="2.0.0", freeze=True, actor=people["bob"])
    batch = batches.start_migration(
        "toy", source="1.0.0", target="2.0.0", selection_token=preview.selection_token, actor=people["alice"]
    )
    with pytest.raises(Conflict, match="bob previewed batch"):
        batches.approve_batch(batch.pk, approver=people["bob"])


def test_exactly_at_the_threshold_no_approval_is_needed(people):
    batch = confirmed(people["alice"], n=5)
    assert batch.state == State.RUNNING and batch.requested_by == ""


def test_threshold_zero_turns_four_eyes_off(people, settings):
    settings.WORKFLOWS_APPROVAL_THRESHOLD = 0
    batch = confirmed(people["alice"], n=50)
    assert batch.state == State.RUNNING
    assert not AuditEvent.objects.filter(action="batch.approval_requested").exists()


def test_a_live_batch_without_a_preview_is_counted_at_creation(people):
    waiting_instances(6)
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0", actor="cli:alice")
    assert batch.state == State.AWAITING_APPROVAL and batch.selection_upto is not None
    # The requester from the command line is the same person on the dashboard.
    with pytest.raises(Conflict, match="alice requested batch"):
        batches.approve_batch(batch.pk, approver=people["alice"])
    assert run_batch(batches.approve_batch(batch.pk, approver=people["bob"])).succeeded == 6


def test_reject_needs_a_reason_and_ends_the_batch_with_nothing_migrated(people):
    batch = confirmed(people["alice"])
    for reason in ("", "   ", None, "x\x00y", "bad \ud800"):
        with pytest.raises(InvalidInput) as refused:
            batches.reject_batch(batch.pk, approver=people["bob"], reason=reason)
        assert refused.value.field == "reason"
    with pytest.raises(Conflict, match="needs the permission approve_migrations"):
        batches.reject_batch(batch.pk, approver=people["carol"], reason="no")
    rejected = batches.reject_batch(batch.pk, approver=people["bob"], reason="not during the sale")
    assert (rejected.state, rejected.skipped, rejected.succeeded) == (State.CANCELLED, 6, 0)
    errors = set(BatchItem.objects.filter(batch=batch).values_list("state", "error"))
    assert errors == {("skipped", "rejected by bob: not during the sale")}
    event = AuditEvent.objects.get(batch=batch, action="batch.rejected")
    assert event.actor_label == "bob" and event.details["reason"] == "not during the sale"
    assert WorkflowInstance.objects.filter(version__version="1.0.0").count() == 6
    with pytest.raises(Conflict, match="only a batch awaiting approval can be approved"):
        batches.approve_batch(batch.pk, approver=people["bob"])


def test_a_request_expires_with_its_preview(people, settings):
    settings.WORKFLOWS_DRAFT_HOURS = 2
    batch = confirmed(people["alice"])
    fresh = batches.start_migration(
        "toy", source="1.0.0", target="2.0.0", actor=people["alice"], selection={"statuses": ["waiting"]}
    )
    MigrationBatch.objects.filter(pk=batch.pk).update(created_at=timezone.now() - timedelta(hours=2, minutes=1))
    with pytest.raises(Conflict, match="expired at .*WORKFLOWS_DRAFT_HOURS=2"):
        batches.approve_batch(batch.pk, approver=people["bob"])

    assert batches.discard_stale_drafts() == 1
    batch.refresh_from_db()
    fresh.refresh_from_db()
    assert (batch.state, batch.skipped) == (State.CANCELLED, 6)
    assert fresh.state == State.AWAITING_APPROVAL  # younger than its preview's lifetime
    event = AuditEvent.objects.get(batch=batch, action="batch.approval_expired")
    assert event.actor_label == "system:batches" and "requested by alice" in event.message
    assert batches.discard_stale_drafts() == 0  # expired once


def test_a_requester_may_withdraw_by_cancelling(people):
    batch = confirmed(people["alice"])
    assert batch.state == State.AWAITING_APPROVAL
    cancelled = batches.cancel_batch(batch.pk, actor=people["alice"])
    assert (cancelled.state, cancelled.skipped) == (State.CANCELLED, 6)


def test_rollback_and_retry_over_the_threshold_wait_for_approval(people, monkeypatch):
    from . import workflows_for_tests

    alice, bob = people["alice"], people["bob"]
    migration = workflows_for_tests.toy.migrations[next(iter(workflows_for_tests.toy.migrations))]
    original = migration.func
    monkeypatch.setattr(migration, "func", lambda context: 1 / 0)
    failed = run_batch(batches.approve_batch(confirmed(alice, n=8).pk, approver=bob))
    assert failed.failed == 8
    monkeypatch.setattr(migration, "func", original)
    retry = batches.retry_failed(failed.pk, actor=alice)
    assert retry.state == State.AWAITING_APPROVAL
    retried = run_batch(batches.approve_batch(retry.pk, approver=bob))
    assert retried.succeeded == 8
    assert actions(retry)[1:3] == [("batch.approved", "bob"), ("batch.retry_started", "bob")]

    rollback = batches.start_rollback(retried.pk, actor=alice)
    assert rollback.state == State.AWAITING_APPROVAL
    with pytest.raises(Conflict, match="alice requested"):
        batches.approve_batch(rollback.pk, approver=alice)
    assert run_batch(batches.approve_batch(rollback.pk, approver=bob)).succeeded == 8
    assert WorkflowInstance.objects.filter(version__version="1.0.0").count() == 8


def test_rules_refuse_a_rollback_of_a_batch_that_migrated_nothing_yet(people):
    batch = confirmed(people["alice"])
    verdict = rules.can_rollback(batch)
    assert not verdict and "has migrated nothing yet; cancel it instead" in verdict.reason


def test_the_stale_cleanup_migrate_waits_for_approval_and_is_not_taken_twice(people):
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    v1.max_lifetime, v1.stale_policy = timedelta(hours=1), "migrate"
    v1.save()
    waiting_instances(7)
    WorkflowInstance.objects.update(created_at=timezone.now() - timedelta(hours=2))
    plan = cleanup.run_cleanup()
    [batch_id] = plan.versions[0].batch_ids
    batch = MigrationBatch.objects.get(pk=batch_id)
    assert (batch.state, batch.requested_by) == (State.AWAITING_APPROVAL, "system:cleanup")
    assert cleanup.run_cleanup().migrating == 0  # its instances are held by the request
    # Requested by the system: any user with the permission approves it.
    assert run_batch(batches.approve_batch(batch.pk, approver=people["alice"])).succeeded == 7


def cli(*args: str) -> tuple[int, str, str]:
    out = StringIO()
    try:
        call_command("workflows", *args, stdout=out)
    except CommandError as error:
        return error.returncode, out.getvalue(), str(error)
    return 0, out.getvalue(), ""


def test_cli_approve_and_reject_as_the_dashboard_user_of_the_machine_user(people, monkeypatch, django_user_model):
    waiting_instances(6)
    monkeypatch.setattr(getpass, "getuser", lambda: "alice")
    code, out, _ = cli("migrate", "toy", "--from", "1.0.0", "--to", "2.0.0")
    assert code == 0 and "waits for a second user: `workflows batch approve" in out
    batch = MigrationBatch.objects.get()
    assert (batch.state, batch.requested_by) == (State.AWAITING_APPROVAL, "cli:alice")

    code, _, message = cli("batch", "approve", str(batch.pk))
    assert code == exit_codes.BAD_INPUT and "alice requested batch" in message and message.endswith("[batch]")
    monkeypatch.setattr(getpass, "getuser", lambda: "mallory")
    code, _, message = cli("batch", "approve", str(batch.pk))
    assert code == exit_codes.BAD_INPUT and "no active dashboard user named 'mallory'" in message
    monkeypatch.setattr(getpass, "getuser", lambda: "bob")
    code, _, message = cli("batch", "reject", str(batch.pk))
    assert code == exit_codes.BAD_INPUT and message.endswith("[reason]")
    code, _, message = cli("batch", "approve", str(batch.pk), "--reason", "fine")
    assert code == exit_codes.BAD_INPUT and message.endswith("[reason]")
    code, out, _ = cli("batch", "approve", str(batch.pk), "--json")
    assert code == 0 and json.loads(out)["state"] == State.RUNNING
    assert actions(batch)[1:3] == [("batch.approved", "cli:bob"), ("batch.started", "cli:bob")]

    run_batch(batch)
    other = batches.start_rollback(batch.pk, actor="cli:alice")
    code, out, _ = cli("batch", "reject", str(other.pk), "--reason", "keep 2.0.0", "--json")
    assert code == 0 and json.loads(out)["state"] == State.CANCELLED
    assert AuditEvent.objects.get(batch=other, action="batch.rejected").actor_label == "cli:bob"


def test_dashboard_shows_the_request_and_approves_only_for_a_second_user(people, client):
    alice, bob = people["alice"], people["bob"]
    batch = confirmed(alice)
    page = f"/batches/{batch.pk}/"
    action = f"/batches/{batch.pk}/action/"
    alice.user_permissions.add(Permission.objects.get(codename="view_dashboard"))
    bob.user_permissions.add(Permission.objects.get(codename="view_dashboard"))

    client.force_login(alice)
    shown = client.get(page).content.decode()
    assert "Awaiting approval" in shown and "data-approve" not in shown
    assert "alice requested batch" in shown and "data-approval-refused" in shown
    refused = client.post(action, {"action": "approve", "confirmed": "1"})
    assert refused.status_code == 409 and "alice requested batch" in refused.content.decode()

    client.force_login(people["carol"])
    assert client.post(action, {"action": "approve", "confirmed": "1"}).status_code == 403

    client.force_login(bob)
    assert "data-approve" in client.get(page).content.decode()
    asked = client.post(action, {"action": "approve"})  # without JavaScript: a confirmation page first
    assert asked.status_code == 200 and "Yes, approve it" in asked.content.decode()
    batch.refresh_from_db()
    assert batch.state == State.AWAITING_APPROVAL
    assert client.post(action, {"action": "approve", "confirmed": "1"}).status_code == 302
    batch.refresh_from_db()
    assert batch.state == State.RUNNING


def test_dashboard_reject_carries_the_reason_through_the_confirmation(people, client):
    batch = confirmed(people["alice"])
    people["bob"].user_permissions.add(Permission.objects.get(codename="view_dashboard"))
    client.force_login(people["bob"])
    action = f"/batches/{batch.pk}/action/"
    asked = client.post(action, {"action": "reject", "reason": "after the freeze"}).content.decode()
    assert 'name="reason" value="after the freeze"' in asked
    assert client.post(action, {"action": "reject", "reason": "", "confirmed": "1"}).status_code == 400
    assert client.post(action, {"action": "reject", "reason": "after the freeze", "confirmed": "1"}).status_code == 302
    batch.refresh_from_db()
    assert batch.state == State.CANCELLED
    assert AuditEvent.objects.get(batch=batch, action="batch.rejected").details["reason"] == "after the freeze"


def test_the_preview_says_up_front_that_confirming_will_need_approval(people, client):
    waiting_instances(6)
    carol = people["carol"]
    carol.user_permissions.add(Permission.objects.get(codename="view_dashboard"))
    client.force_login(carol)
    url = f"/versions/{WorkflowVersion.objects.get(workflow__name='toy', version='1.0.0').pk}/migrate/"
    html = client.post(url, {"target": "2.0.0"}).content.decode()
    assert "data-needs-approval" in html and "over the approval threshold of 5" in html
    assert "Ask approval to migrate 6 instances" in html

    code, out, _ = cli("migrate", "toy", "--from", "1.0.0", "--to", "2.0.0", "--dry-run", "--json")
    assert code == 0 and json.loads(out)["needs_approval"] is True and json.loads(out)["approval_threshold"] == 5
    code, out, _ = cli("migrate", "toy", "--from", "1.0.0", "--to", "2.0.0", "--dry-run")
    assert "over the approval threshold of 5 instances" in out

    first = str(WorkflowInstance.objects.order_by("pk")[0].pk)
    small = batches.preview_migration("toy", source="1.0.0", target="2.0.0", selection={"ids": [int(first)]}).report
    assert small["needs_approval"] is False
    html = client.post(url, {"target": "2.0.0", "ids": first}).content.decode()
    assert "data-needs-approval" not in html and "Migrate 1 instance<" in html
