"""A real worker SIGKILLed in the middle of a large batch: the batch completes, each instance migrated once."""

import time

import pytest
from django.db.models import Count

from workflows_admin.workflows.models import BatchItem, MigrationBatch, WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.selectors import status_counts_by_version
from workflows_admin.workflows.services import batches
from workflows_admin.workflows.services.registry_sync import sync_registry

from .faults import BeatProcess, PrivateRedis, run_every
from .helpers import waiting_instances
from .worker import WorkerProcess, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
INSTANCES = 10_000


def test_sigkilled_worker_mid_batch_every_instance_migrated_exactly_once():
    sync_registry()
    run_every("Resume stalled migration batches", 2)
    redis = PrivateRedis().start()
    env = {"CELERY_BROKER_URL": redis.url, "WORKFLOWS_BATCH_STALL_SECONDS": "3", "CELERY_VISIBILITY_TIMEOUT": "3600"}
    waiting_instances(INSTANCES)
    worker = WorkerProcess(extra_env=env).start()
    beat = BeatProcess(env).start()
    try:
        from workflows_admin.celery import app

        batch = batches.start_migration("toy", "1.0.0", "2.0.0", chunk_size=250)
        with app.connection_for_write(redis.url) as conn:
            # The first chunk through the worker's broker (start_migration sent it through this process's).
            app.send_task("workflows_admin.workflows.tasks.process_batch_chunk", args=(batch.pk,), connection=conn)
        for _ in range(3):
            done = MigrationBatch.objects.get(pk=batch.pk).processed
            wait_until(
                lambda done=done: MigrationBatch.objects.get(pk=batch.pk).processed > done + 500,
                timeout=120,
                message="the batch to progress",
            )
            worker.kill()
            time.sleep(1)
            worker = WorkerProcess(extra_env=env).start()
        wait_until(lambda: MigrationBatch.objects.get(pk=batch.pk).is_finished, timeout=300, message="batch done")
    finally:
        beat.stop()
        worker.stop()
        redis.remove()
    batch.refresh_from_db()
    assert (batch.state, batch.total, batch.succeeded, batch.failed, batch.skipped) == (
        "completed",
        INSTANCES,
        INSTANCES,
        0,
        0,
    )
    assert BatchItem.objects.filter(batch=batch).values("instance_id").annotate(n=Count("id")).filter(n=1).count() == (
        INSTANCES
    )
    assert WorkflowInstance.objects.filter(version__version="2.0.0", revision=2).count() == INSTANCES
    counts = status_counts_by_version()
    target = WorkflowVersion.objects.get(workflow__name="toy", version="2.0.0")
    assert counts[target.pk] == {"waiting": INSTANCES}
