"""Chains of chunk tasks and their leases: the resumer replaces a chain whose lease ran out (and only
such a chain), a task of a replaced chain does nothing, and the worker's keeper renews the leases of
the chains it runs. The real-worker version (SIGKILL, broker restart) is test_reliability_batches."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from workflows_admin.workflows.models import BatchChain, MigrationBatch
from workflows_admin.workflows.services import batches
from workflows_admin.workflows.services.batches.leases import keeper
from workflows_admin.workflows.services.instances import start_workflows
from workflows_admin.workflows.services.registry_sync import sync_registry

LATER = timedelta(seconds=6)  # past the default 5 s lease


def chain_ids(batch) -> set[int]:
    return set(BatchChain.objects.filter(batch=batch).values_list("pk", flat=True))


def processed(batch) -> int:
    return MigrationBatch.objects.get(pk=batch.pk).processed


@pytest.mark.django_db
def test_a_chain_whose_lease_ran_out_is_replaced_and_its_late_task_does_nothing(synced):
    start_workflows("toy", [{"n": i} for i in range(30)], version="1.0.0")
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0", chunk_size=10)
    first = chain_ids(batch)
    assert len(first) == 2  # two chains at once (WORKFLOWS_BATCH_PARALLEL_CHUNKS)
    assert batches.resume_stalled_batches() == 0  # leases still held: nothing to replace

    assert batches.resume_stalled_batches(now=timezone.now() + LATER) == 2
    replaced = chain_ids(batch)
    assert len(replaced) == 2 and not replaced & first
    # The lost tasks turn up after all (a worker that came back, a redelivery): they take nothing.
    for chain in first:
        assert batches.process_batch(batch.pk, 0, chain) == "retired"
    assert processed(batch) == 0
    assert batches.process_batch(batch.pk, 0, min(replaced)) == "finished"
    assert processed(batch) == 30
    assert chain_ids(batch) == {max(replaced)}  # the finished chain ended; the other ends when its task runs


@pytest.mark.django_db
def test_a_resume_retires_the_chains_from_before_the_pause(synced):
    start_workflows("toy", [{"n": i} for i in range(30)], version="1.0.0")
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0", chunk_size=10)
    before = chain_ids(batch)
    batches.pause_batch(batch.pk)
    batches.resume_batch(batch.pk)
    after = chain_ids(batch)
    assert len(after) == 2 and not after & before  # never four chains on a batch that may run two
    assert batches.process_batch(batch.pk, 0, min(before)) == "retired"


@pytest.mark.django_db
def test_waiting_and_auto_upgrade_batches_are_not_resumed(synced):
    start_workflows("toy", [{"n": i} for i in range(30)], version="1.0.0")
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0", pacing={"rate_limit": 10})
    assert batches.process_chunk(batch.pk, chain=min(chain_ids(batch))) == "more"  # next chunk due in 1 s
    expired = timezone.now() - timedelta(seconds=1)
    BatchChain.objects.filter(batch=batch).update(lease_expires_at=expired)
    # Paced: the chain that set next_chunk_at carries on (a second one would end "early" and drop it).
    assert batches.resume_stalled_batches() == 0
    soon = timezone.now() + timedelta(hours=1)
    MigrationBatch.objects.filter(pk=batch.pk).update(next_chunk_at=None, not_before=soon)
    assert batches.resume_stalled_batches() == 0  # scheduled for later
    MigrationBatch.objects.filter(pk=batch.pk).update(not_before=None, auto_upgrade=True)
    assert batches.resume_stalled_batches() == 0  # moved at step boundaries, never by chains
    MigrationBatch.objects.filter(pk=batch.pk).update(auto_upgrade=False)
    assert batches.resume_stalled_batches() == 1  # nothing left that excuses it


@pytest.mark.django_db
def test_a_running_batch_left_without_chains_gets_them(synced):
    start_workflows("toy", [{"n": i} for i in range(30)], version="1.0.0")
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0")
    BatchChain.objects.filter(batch=batch).delete()  # its tasks were queued by a version before chains
    assert batches.resume_stalled_batches() == 0  # it made progress (started) less than a lease ago
    assert batches.resume_stalled_batches(now=timezone.now() + LATER) == 1
    assert len(chain_ids(batch)) == 2


@pytest.mark.django_db(transaction=True)
def test_the_keeper_renews_the_leases_of_running_chains_only(settings):
    sync_registry()
    settings.WORKFLOWS_BATCH_LEASE_SECONDS = 0.3
    start_workflows("toy", [{"n": 1}], version="1.0.0")
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0")
    held, idle = sorted(chain_ids(batch))
    with keeper.holding(held):
        time.sleep(1.0)  # three leases long: renewed on the keeper's own connection meanwhile
        assert BatchChain.objects.get(pk=held).lease_expires_at > timezone.now()
        assert BatchChain.objects.get(pk=idle).lease_expires_at < timezone.now()
    time.sleep(0.5)
    assert BatchChain.objects.get(pk=held).lease_expires_at < timezone.now()  # no longer vouched for
