"""A batch migration survives its worker being SIGKILLed, its broker stopping and its database
connections being dropped: it completes, every instance is migrated exactly once with exactly one
snapshot, and the dashboard's counts equal COUNT(*) per version and status; and it makes progress
again within RECOVERY_BOUND seconds of each fault (chain leases and the resumer, at their defaults).
Real worker (-c 2, so two chunks run at once), real beat, a private Redis, PostgreSQL.

CI runs the quick sizes; the long version is the same tests with a bigger batch:
    RELIABILITY_INSTANCES=20000 pytest tests/test_reliability_batches.py
"""

import os
import time

import pytest
from django.db import connection
from django.db.models import Count

from workflows_admin.workflows.models import BatchChain, BatchItem, MigrationBatch, WorkflowInstance
from workflows_admin.workflows.selectors import status_counts_by_version
from workflows_admin.workflows.services import batches
from workflows_admin.workflows.services.registry_sync import sync_registry

from .faults import BeatProcess, PrivateRedis, terminate_other_connections
from .helpers import waiting_instances
from .worker import WorkerProcess, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
INSTANCES = int(os.environ.get("RELIABILITY_INSTANCES", "10000"))
# The promise: a batch whose worker died or whose broker restarted moves again within 10 s (a lease
# of 5 s, a resumer every 2 s, and the worker's own restart or reconnection).
RECOVERY_BOUND = 10.0


@pytest.fixture(autouse=True)
def _no_approval(settings):
    """These batches are over the approval threshold; what is tested is their run, not four eyes."""
    settings.WORKFLOWS_APPROVAL_THRESHOLD = 0


@pytest.fixture
def redis():
    server = PrivateRedis().start()
    yield server
    server.remove()


def processed(batch_id: int) -> int:
    return MigrationBatch.objects.get(pk=batch_id).processed


def seconds_to_progress(batch_id: int, fault_at: float, done: int) -> float:
    """Seconds from the fault (a monotonic time) until the batch processed more than `done`."""
    wait_until(lambda: processed(batch_id) > done, timeout=120, interval=0.05, message="progress after the fault")
    recovery = time.monotonic() - fault_at
    print(f"recovery: {recovery:.1f} s")  # the README's reliability table quotes these (pytest -s)
    return recovery


def run_batch_with_fault(redis: PrivateRedis, instances: int, inject) -> MigrationBatch:
    """Migrate `instances` waiting toy instances with a real worker; `inject(worker, batch_id)` strikes
    mid-batch and returns the worker to stop at the end."""
    sync_registry()
    env = {
        "CELERY_BROKER_URL": redis.url,
        # No redelivery of a dead worker's tasks within the test: the chains' leases must do it.
        "CELERY_VISIBILITY_TIMEOUT": "3600",
        # 2 ms per instance: the batch takes seconds, not a fraction of one, so every fault lands mid-batch.
        "TOY_MIGRATION_SECONDS": "0.002",
    }
    waiting_instances(instances)
    worker = WorkerProcess(extra_env=env).start()
    beat = BeatProcess(env).start()
    try:
        from workflows_admin.celery import app

        batch = batches.start_migration("toy", source="1.0.0", target="2.0.0", chunk_size=250)
        with app.connection_for_write(redis.url) as conn:
            # The chains' first tasks through the worker's broker (start_migration sent them through this process's).
            for chain in BatchChain.objects.filter(batch=batch).values_list("pk", flat=True):
                app.send_task(
                    "workflows_admin.workflows.tasks.process_batch_chunk", args=(batch.pk, 0, chain), connection=conn
                )
        wait_until(lambda: processed(batch.pk) > 500, timeout=120, message="the batch to progress")
        worker = inject(worker, env, batch.pk)
        wait_until(lambda: MigrationBatch.objects.get(pk=batch.pk).is_finished, timeout=300, message="batch done")
    finally:
        beat.stop()
        worker.stop()
    batch.refresh_from_db()
    return batch


def assert_each_instance_migrated_exactly_once(batch: MigrationBatch, instances: int) -> None:
    assert (batch.state, batch.total, batch.succeeded, batch.failed, batch.skipped) == (
        "completed",
        instances,
        instances,
        0,
        0,
    )
    one_item_each = BatchItem.objects.filter(batch=batch).values("instance_id").annotate(n=Count("id")).filter(n=1)
    assert one_item_each.count() == instances
    # One snapshot per instance, taken before its only move (revision 1 -> 2).
    snapshots = BatchItem.objects.filter(batch=batch, from_context__isnull=False, revision_after=2)
    assert snapshots.count() == instances
    assert WorkflowInstance.objects.count() == instances
    assert WorkflowInstance.objects.filter(version__version="2.0.0", revision=2).count() == instances
    with connection.cursor() as cursor:
        cursor.execute("SELECT version_id, status, count(*) FROM workflows_workflowinstance GROUP BY 1, 2")
        exact = {}
        for version_id, status, count in cursor.fetchall():
            exact.setdefault(version_id, {})[status] = count
    assert status_counts_by_version() == exact


def test_sigkilled_worker_mid_batch_every_instance_migrated_exactly_once(redis):
    recoveries = []

    def kill_three_times(worker, env, batch_id):
        for _ in range(3):
            done = processed(batch_id)
            wait_until(lambda done=done: processed(batch_id) > done + 500, timeout=120, message="progress")
            killed_at = time.monotonic()
            worker.kill()
            time.sleep(1)  # the killed chunks' transactions roll back; then a new worker starts, as a supervisor would
            done = processed(batch_id)
            worker = WorkerProcess(extra_env=env).start()
            recoveries.append(seconds_to_progress(batch_id, killed_at, done))
        return worker

    batch = run_batch_with_fault(redis, INSTANCES, kill_three_times)
    assert_each_instance_migrated_exactly_once(batch, INSTANCES)
    assert max(recoveries) < RECOVERY_BOUND, recoveries


def test_a_broker_outage_mid_batch(redis):
    left_when_stopped, recoveries = [], []

    def stop_redis_for_ten_seconds(worker, env, batch_id):
        redis.stop()
        left_when_stopped.append(INSTANCES - processed(batch_id))
        time.sleep(10)
        redis.start()
        restarted_at = time.monotonic()
        recoveries.append(seconds_to_progress(batch_id, restarted_at, processed(batch_id)))
        return worker

    batch = run_batch_with_fault(redis, INSTANCES, stop_redis_for_ten_seconds)
    assert left_when_stopped[0] > 0  # the outage struck mid-batch
    assert_each_instance_migrated_exactly_once(batch, INSTANCES)
    assert recoveries[0] < RECOVERY_BOUND, recoveries  # from the broker's restart


def test_dropped_database_connections_mid_batch(redis):
    left_when_dropped, recoveries = [], []

    def drop_connections_five_times(worker, env, batch_id):
        left_when_dropped.append(INSTANCES - processed(batch_id))
        for _ in range(5):
            terminate_other_connections()
            time.sleep(0.5)
        dropped_at = time.monotonic()
        recoveries.append(seconds_to_progress(batch_id, dropped_at, processed(batch_id)))
        return worker

    batch = run_batch_with_fault(redis, INSTANCES, drop_connections_five_times)
    assert left_when_dropped[0] > 0  # the connections dropped mid-batch
    assert_each_instance_migrated_exactly_once(batch, INSTANCES)
    assert recoveries[0] < RECOVERY_BOUND, recoveries  # from the last drop
