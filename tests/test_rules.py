"""One rule per action (workflows.rules): the service accepts an action exactly when its rule allows
it, and refuses with the rule's reason; the dashboard shows the button on the same verdict."""

import pytest
from django.db import transaction

from workflows_admin.workflows import selectors
from workflows_admin.workflows.models import MigrationBatch, WorkflowVersion
from workflows_admin.workflows.services import batches, lifecycle
from workflows_admin.workflows.services.errors import Conflict

from .helpers import run_batch, waiting_instances

pytestmark = pytest.mark.django_db

BATCH_ACTIONS = {
    "pause": batches.pause_batch,
    "resume": batches.resume_batch,
    "cancel": batches.cancel_batch,
    "retry": batches.retry_failed,
    "rollback": batches.start_rollback,
}


@pytest.fixture
def batches_in_every_state(synced, settings):
    """A migration running, paused, cancelled, completed, completed with failures, queued and awaiting
    approval; and a rollback."""
    from workflows_admin.workflows.services.instances import start_workflows

    waiting_instances(12)
    start_workflows("toy", [{"n": 1, "poison": True}], version="1.0.0")
    found = {}
    found["completed_with_failures"] = run_batch(
        batches.start_migration(
            "toy", source="1.0.0", target="2.0.0", selection={"statuses": ["waiting", "pending"]}
        ).pk
    )
    found["rollback"] = run_batch(batches.start_rollback(found["completed_with_failures"].pk).pk)
    waiting_instances(12)
    one = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0").instances.order_by("pk").first()
    found["completed"] = run_batch(
        batches.start_migration("toy", source="1.0.0", target="2.0.0", selection={"ids": [one.pk]}).pk
    )
    waiting_instances(6, version="2.0.0")
    # One batch at a time over a version: the paused one holds 2.0.0's place, the running one 1.0.0's.
    for state, source, target in (
        ("cancelled", "1.0.0", "2.0.0"),
        ("paused", "2.0.0", "1.0.0"),
        ("running", "1.0.0", "2.0.0"),
    ):
        batch = batches.start_migration(
            "toy", source=source, target=target, chunk_size=2, selection={"statuses": ["waiting"]}
        )
        batches.process_chunk(batch.pk, hand_on=False)
        if state == "paused":
            batches.pause_batch(batch.pk)
        if state == "cancelled":
            batches.cancel_batch(batch.pk)
        found[state] = MigrationBatch.objects.get(pk=batch.pk)
    found["queued"] = batches.start_migration(
        "toy", source="1.0.0", target="2.0.0", selection={"statuses": ["waiting"]}
    )
    settings.WORKFLOWS_APPROVAL_THRESHOLD = 3
    found["awaiting_approval"] = batches.start_migration(
        "toy", source="1.0.0", target="2.0.0", selection={"statuses": ["waiting"]}
    )
    assert {name: batch.state for name, batch in found.items() if name in ("queued", "awaiting_approval")} == {
        "queued": "queued",
        "awaiting_approval": "awaiting_approval",
    }
    return found


def test_each_batch_service_accepts_exactly_what_the_batch_page_shows(batches_in_every_state):
    """The page's verdict is the rule given what the child batches did (selectors.batch_actions)."""
    checked = 0
    for name, batch in batches_in_every_state.items():
        for action, service in BATCH_ACTIONS.items():
            batch.refresh_from_db()
            verdict = selectors.batch_actions(batch, selectors.batch_follow_ups(batch))[action]
            try:
                with transaction.atomic():
                    service(batch.pk)
                    accepted = True
                    transaction.set_rollback(True)  # see the answer, keep the scene
            except Conflict as refusal:
                accepted = False
                assert refusal.message == verdict.reason, (name, action)
            assert accepted == verdict.allowed, (name, action, verdict)
            checked += 1
    assert checked == 8 * 5


def test_the_page_verdicts_add_what_the_child_batches_did(batches_in_every_state):
    migrated = batches_in_every_state["completed_with_failures"]
    follow_ups = selectors.batch_follow_ups(migrated)
    assert follow_ups["undone"] == migrated.succeeded
    verdicts = selectors.batch_actions(migrated, follow_ups)
    assert not verdicts["rollback"]
    assert verdicts["rollback"].reason.endswith("has no migrated instance left to roll back")
    with pytest.raises(Conflict, match="has no migrated instance left to roll back"):
        batches.start_rollback(migrated.pk)
    assert verdicts["retry"]  # its poisoned instance failed and was never retried
    paused = batches_in_every_state["paused"]
    assert selectors.batch_actions(paused, selectors.batch_follow_ups(paused))["rollback"]


def version(label, workflow="toy"):
    return WorkflowVersion.objects.get(workflow__name=workflow, version=label)


LIFECYCLE = {
    "make_current": lambda v: lifecycle.make_current(v),
    "drain": lambda v: lifecycle.drain(v),
    "retire": lambda v: lifecycle.retire(v),
    "ramp": lambda v: lifecycle.set_ramp(v, 10),
}


def test_each_version_service_accepts_exactly_what_the_version_page_shows(synced, settings):
    settings.WORKFLOWS_WARM_VERSIONS = 1
    waiting_instances(2)
    lifecycle.set_ramp(version("1.0.0", "research-agent"), 20)
    checked = 0
    for row in WorkflowVersion.objects.select_related("workflow"):
        in_flight = selectors.version_lifecycle(row.workflow_id)[row.pk]["in_flight"]
        for action, verdict in selectors.version_actions(row, in_flight).items():
            try:
                with transaction.atomic():
                    LIFECYCLE[action](row)
                    accepted = True
                    transaction.set_rollback(True)
            except Conflict as refusal:
                accepted = False
                assert refusal.message == verdict.reason, (row, action)
            assert accepted == verdict.allowed, (row, action, verdict)
            checked += 1
    assert checked >= 4 * 4
