"""A queue of batches: one batch at a time over a source version, the next launched when it ends."""

import threading
import time

import pytest
from django.db import connection

from workflows_admin.workflows.models import AuditEvent, MigrationBatch, WorkflowInstance
from workflows_admin.workflows.selectors import batches_from
from workflows_admin.workflows.services import batches
from workflows_admin.workflows.services.batches import queueing
from workflows_admin.workflows.services.errors import Conflict

from .helpers import run_batch, waiting_instances

pytestmark = pytest.mark.django_db
State = MigrationBatch.State


def states(*queued: MigrationBatch) -> list[tuple[str, int | None]]:
    rows = {row.pk: row for row in MigrationBatch.objects.filter(pk__in=[b.pk for b in queued])}
    return [(rows[b.pk].state, batches.queue_place(rows[b.pk])) for b in queued]


@pytest.fixture
def three(synced, operator):
    """Three batches over toy 1.0.0: the first runs, the others queue behind it in order."""
    waiting_instances(30)
    first = batches.start_migration(
        "toy", source="1.0.0", target="2.0.0", actor=operator, selection={"ids": ids(0, 10)}
    )
    second = batches.start_migration(
        "toy", source="1.0.0", target="2.0.0", actor=operator, selection={"ids": ids(10, 20)}
    )
    third = batches.start_migration(
        "toy", source="1.0.0", target="2.0.0", actor=operator, selection={"ids": ids(20, 30)}
    )
    return first, second, third


def ids(start: int, end: int) -> list[int]:
    return list(WorkflowInstance.objects.order_by("pk").values_list("pk", flat=True)[start:end])


def test_a_second_batch_over_a_version_queues_in_order_and_shows_its_place(three):
    first, second, third = three
    assert states(first, second, third) == [(State.RUNNING, None), (State.QUEUED, 1), (State.QUEUED, 2)]
    assert batches.process_chunk(second.pk) == State.QUEUED  # a stray chunk task does nothing
    assert WorkflowInstance.objects.filter(version__version="2.0.0").count() == 0
    queued = AuditEvent.objects.get(batch=third, action="batch.queued")
    assert queued.details == {"place": 2, "behind": first.pk, "action": "batch.started"}
    listed = {row.pk: row.queue_place for row in batches_from(first.source_version)}
    assert listed == {first.pk: None, second.pk: 1, third.pk: 2}


def test_the_next_is_launched_when_the_first_finishes(three):
    first, second, third = three
    assert run_batch(first).state == State.COMPLETED
    assert states(second, third) == [(State.RUNNING, None), (State.QUEUED, 1)]
    started = AuditEvent.objects.get(batch=second, action="batch.started")
    assert started.actor_label == "system:batches" and "the batches before it" in started.message
    run_batch(second)
    assert run_batch(MigrationBatch.objects.get(pk=third.pk)).state == State.COMPLETED
    assert WorkflowInstance.objects.filter(version__version="2.0.0").count() == 30


def test_cancel_of_a_queued_batch_moves_the_ones_behind_it_up_and_launches_nothing(three):
    first, second, third = three
    cancelled = batches.cancel_batch(second.pk)
    assert (cancelled.state, cancelled.skipped) == (State.CANCELLED, 10)
    assert states(first, third) == [(State.RUNNING, None), (State.QUEUED, 1)]
    run_batch(first)
    assert states(third) == [(State.RUNNING, None)]


def test_cancel_of_the_first_launches_the_next(three):
    first, second, third = three
    batches.cancel_batch(first.pk)
    assert states(first, second, third) == [(State.CANCELLED, None), (State.RUNNING, None), (State.QUEUED, 1)]


def test_a_paused_batch_keeps_its_place_and_a_queued_one_cannot_be_paused(three):
    first, second, _ = three
    batches.pause_batch(first.pk)
    with pytest.raises(Conflict, match="queued batch cannot be paused: cancel it, or pause it once it runs"):
        batches.pause_batch(second.pk)
    with pytest.raises(Conflict, match="only a paused batch can be resumed"):
        batches.resume_batch(second.pk)
    assert states(second) == [(State.QUEUED, 1)]  # a paused batch is unfinished: the queue waits
    batches.resume_batch(first.pk)
    run_batch(first)
    assert states(second) == [(State.RUNNING, None)]


def test_other_versions_do_not_wait_and_a_one_instance_move_goes_at_once(three, operator):
    first, second, _ = three
    waiting_instances(2, version="2.0.0")
    other = batches.start_migration(
        "toy", source="2.0.0", target="1.0.0", actor=operator, selection={"statuses": ["waiting"]}
    )
    assert other.state == State.RUNNING
    lone = ids(29, 30)[0]
    moved = batches.migrate_instance(lone, "2.0.0", actor=operator)
    assert moved.state == State.COMPLETED
    assert states(first, second) == [(State.RUNNING, None), (State.QUEUED, 1)]  # first still holds the place


def test_an_approved_batch_joins_the_queue_and_a_rejected_one_holds_no_place(three, settings, django_user_model):
    from django.contrib.auth.models import Permission

    _, second, third = three
    settings.WORKFLOWS_APPROVAL_THRESHOLD = 5
    approver = django_user_model.objects.create_user("bob", password="pw-bob-12345")
    approver.user_permissions.add(Permission.objects.get(codename="approve_migrations"))
    big = batches.start_migration(
        "toy", source="1.0.0", target="2.0.0", actor="cli:ops", selection={"statuses": ["waiting"]}
    )
    assert states(big) == [(State.AWAITING_APPROVAL, None)]
    assert batches.approve_batch(big.pk, approver=approver).state == State.QUEUED
    assert states(second, third, big) == [(State.QUEUED, 1), (State.QUEUED, 2), (State.QUEUED, 3)]


@pytest.mark.django_db(transaction=True)
def test_two_batches_started_at_once_never_both_run(synced, monkeypatch):
    waiting_instances(20)
    barrier, made, errors = threading.Barrier(2), [], []
    looked = queueing.holder

    def slow_holder(batch):
        found = looked(batch)
        time.sleep(0.5)  # both would decide on what they saw here, were the decision not serialised
        return found

    monkeypatch.setattr(queueing, "holder", slow_holder)

    def start(selection_ids):
        try:
            barrier.wait()
            made.append(
                batches.start_migration("toy", source="1.0.0", target="2.0.0", selection={"ids": selection_ids})
            )
        except Exception as error:  # reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=start, args=(part,)) for part in (ids(0, 10), ids(10, 20))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(MigrationBatch.objects.values_list("state", flat=True)) == [State.QUEUED, State.RUNNING]


def test_the_batch_and_version_pages_show_the_queue(three, client, operator):
    first, _, third = three
    client.force_login(operator)
    shown = client.get(f"/batches/{third.pk}/").content.decode()
    assert "Queued" in shown and "place 2 in the queue" in shown and f"batch #{first.pk}</a> (running)" in shown
    listed = client.get(f"/versions/{first.source_version_id}/").content.decode()
    assert "place 1" in listed and "place 2" in listed
    assert 'value="pause"' not in shown and 'value="cancel"' in shown
