"""Chunks of one batch side by side: each takes items no other chunk holds, counters add up, the batch
finishes once, and a pause waits for the chunks in flight. A second PostgreSQL session plays the
other chunk, holding its locks while this one works.
"""

import threading
import time

import psycopg
import pytest
from django.utils import timezone

from workflows_admin.workflows.models import AuditEvent, BatchItem, MigrationBatch, WorkflowInstance
from workflows_admin.workflows.services import batches
from workflows_admin.workflows.services.batches import executor

from .helpers import run_batch, waiting_instances
from .worker import database_url

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def batch(synced, settings):
    """A batch whose selection is frozen as pending items (as a preview's is)."""
    settings.WORKFLOWS_BATCH_PARALLEL_CHUNKS = 2
    waiting_instances(30)
    return batches.start_migration("toy", source="1.0.0", target="2.0.0", chunk_size=10, freeze=True)


@pytest.fixture
def live_batch(synced, settings):
    """A batch started without a preview: it takes the instances as it reaches them."""
    settings.WORKFLOWS_BATCH_PARALLEL_CHUNKS = 2
    waiting_instances(30)
    return batches.start_migration("toy", source="1.0.0", target="2.0.0", chunk_size=10)


def other_chunk():
    """A second session that, like a chunk in flight, holds the batch row in KEY SHARE and some items."""
    session = psycopg.connect(database_url())
    session.execute("BEGIN")
    return session


def takes_what_was_held_and_finishes(batch: MigrationBatch) -> MigrationBatch:
    """Once the other chunk is gone, one chunk takes what it held and the next finishes the batch:
    every instance moved exactly once."""
    assert batches.process_chunk(batch.pk) == "more"
    assert batches.process_chunk(batch.pk) == "finished"
    assert WorkflowInstance.objects.filter(version__version="2.0.0", revision=2).count() == 30
    batch.refresh_from_db()
    return batch


def test_a_live_chunk_takes_the_instances_no_other_chunk_holds_and_comes_back_for_them(live_batch):
    batch = live_batch
    session = other_chunk()
    try:
        session.execute("SELECT 1 FROM workflows_migrationbatch WHERE id = %s FOR KEY SHARE", [batch.pk])
        held = [
            row[0]
            for row in session.execute("SELECT id FROM workflows_workflowinstance ORDER BY id LIMIT 10 FOR UPDATE")
        ]
        after = 0
        for _ in range(2):
            outcome, after = executor.process_chunk_from(batch.pk, timezone.now(), hand_on=True, after=after)
            assert outcome == "more"
        # Only the held instances are left: the chain goes back for them, neither waits nor finishes.
        assert executor.process_chunk_from(batch.pk, timezone.now(), hand_on=True, after=after)[0] == "busy"
        assert set(WorkflowInstance.objects.filter(version__version="1.0.0").values_list("pk", flat=True)) == set(held)
        assert not BatchItem.objects.filter(batch=batch, instance_id__in=held).exists()
        assert MigrationBatch.objects.get(pk=batch.pk).state == MigrationBatch.State.RUNNING
    finally:
        session.rollback()
        session.close()
    batch = takes_what_was_held_and_finishes(batch)
    assert (batch.state, batch.total, batch.succeeded, batch.processed) == ("completed", 30, 30, 30)
    assert BatchItem.objects.filter(batch=batch).count() == 30


def test_a_chunk_takes_the_items_no_other_chunk_holds(batch):
    session = other_chunk()
    try:
        session.execute("SELECT 1 FROM workflows_migrationbatch WHERE id = %s FOR KEY SHARE", [batch.pk])
        held = [
            row[0]
            for row in session.execute(
                "SELECT id FROM workflows_batchitem WHERE batch_id = %s ORDER BY id LIMIT 10 FOR UPDATE", [batch.pk]
            )
        ]
        assert batches.process_chunk(batch.pk) == "more"
        assert batches.process_chunk(batch.pk) == "more"
        # Only the held items are left: this chunk neither waits for them nor finishes the batch.
        assert batches.process_chunk(batch.pk) == "busy"
        pending = BatchItem.objects.filter(batch=batch, state=BatchItem.State.PENDING)
        assert sorted(pending.values_list("pk", flat=True)) == held
        assert MigrationBatch.objects.get(pk=batch.pk).state == MigrationBatch.State.RUNNING
    finally:
        session.rollback()
        session.close()
    batch = takes_what_was_held_and_finishes(batch)
    assert (batch.state, batch.succeeded, batch.processed) == ("completed", 30, 30)
    assert AuditEvent.objects.filter(action="batch.finished", batch=batch).count() == 1


def test_two_chunks_at_once_add_their_counts(batch):
    """Both chunks commit their counter increments; neither overwrites the other's."""
    results = []

    def chunk():
        from django.db import connection

        try:
            results.append(batches.process_chunk(batch.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=chunk) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["more", "more"]
    batch.refresh_from_db()
    done = BatchItem.objects.filter(batch=batch).exclude(state=BatchItem.State.PENDING).count()
    assert batch.processed == batch.succeeded == done == 20


def test_the_batch_finishes_once_when_two_chunks_find_nothing_left(batch):
    run_batch(batch.pk)
    batch.refresh_from_db()
    assert batch.state == "completed"
    assert batches.process_chunk(batch.pk) == "completed"
    executor.finish(batch, batch.finished_at)  # a second finisher that got past the state check
    assert AuditEvent.objects.filter(action="batch.finished", batch=batch).count() == 1


def test_a_pause_waits_for_the_chunks_in_flight(batch):
    session = other_chunk()
    session.execute("SELECT 1 FROM workflows_migrationbatch WHERE id = %s FOR KEY SHARE", [batch.pk])
    paused_at = []

    def pause():
        from django.db import connection

        try:
            batches.pause_batch(batch.pk)
            paused_at.append(time.monotonic())
        finally:
            connection.close()

    thread = threading.Thread(target=pause)
    thread.start()
    time.sleep(1)
    assert not paused_at  # still waiting for the chunk in flight
    released_at = time.monotonic()
    session.commit()
    session.close()
    thread.join(timeout=10)
    assert paused_at and paused_at[0] >= released_at
    assert batches.process_chunk(batch.pk) == "paused"
