"""1,000 instances run their steps on a real worker while a migration, its rollback and a stale cleanup
go over them at once: no lost update, no instance in a state its version does not know, every step
run accounted for, counters equal to COUNT(*).
"""

import threading
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone

from workflows_admin.workflows.models import (
    BatchItem,
    InstanceStatus,
    MigrationBatch,
    StepRun,
    Workflow,
    WorkflowInstance,
)
from workflows_admin.workflows.selectors import status_counts_by_version
from workflows_admin.workflows.services import batches, cleanup
from workflows_admin.workflows.services.instances import start_workflows
from workflows_admin.workflows.services.registry_sync import sync_registry

from .helpers import run_batch
from .worker import WorkerProcess, purge_broker, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
INSTANCES = 400  # steps run for ~15 s: the migration, its rollback and the cleanup all overlap them
STEPS = {"1.0.0": ["first", "second"], "2.0.0": ["first", "middle", "second"]}
INCREMENTS = {"v1.first": 1, "v1.second": 1, "v2.first": 10, "v2.middle": 0, "v2.second": 10}


def in_flight() -> int:
    return WorkflowInstance.objects.filter(status__in=["pending", "running", "waiting", "parked"]).count()


def test_steps_migration_rollback_and_cleanup_at_once():
    sync_registry()
    purge_broker()
    worker = WorkerProcess(extra_env={"TOY_STEP_SECONDS": "0.01", "WORKFLOWS_STEP_CHAIN_SECONDS": "0"}).start()
    errors = []
    try:
        instances = start_workflows("toy", [{"n": 0} for _ in range(INSTANCES)], version="1.0.0")
        stale_ids = [i.pk for i in instances[::10]]
        WorkflowInstance.objects.filter(pk__in=stale_ids).update(created_at=timezone.now() - timedelta(hours=2))
        Workflow.objects.filter(name="toy").update(max_lifetime=timedelta(hours=1), stale_policy="expire")

        def migrate_then_roll_back():
            try:
                batch = batches.start_migration(
                    "toy",
                    source="1.0.0",
                    target="2.0.0",
                    chunk_size=50,
                    selection={"statuses": ["pending", "running", "waiting"]},
                )
                run_batch(batch.pk)  # this thread works the chunks too
                wait_until(lambda: MigrationBatch.objects.get(pk=batch.pk).is_finished, timeout=120)
                rollback = batches.start_rollback(batch.pk)
                run_batch(rollback.pk)
            except Exception as exc:  # reported by the assertion below
                errors.append(exc)
            finally:
                connections.close_all()

        def clean_up():
            try:
                cleanup.run_cleanup(chunk_size=20)
            except Exception as exc:
                errors.append(exc)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=migrate_then_roll_back), threading.Thread(target=clean_up)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        wait_until(lambda: in_flight() == 0, timeout=300, message="every instance finished")
    finally:
        worker.stop()
        purge_broker()

    rows = list(WorkflowInstance.objects.select_related("version"))
    assert len(rows) == INSTANCES
    expired = {r.pk for r in rows if r.status == InstanceStatus.EXPIRED}
    assert expired <= set(stale_ids)  # only stale instances were expired, and each once
    for row in rows:
        assert row.status in (InstanceStatus.COMPLETED, InstanceStatus.EXPIRED), (row.pk, row.status)
        known = STEPS[row.version.version]
        assert row.current_step in ("", *known), (row.pk, row.version.version, row.current_step)
        trace = row.context.get("trace", [])
        # Each step result was applied once: no entry twice, and `n` (written with the trace) agrees.
        assert len(trace) == len(set(trace)), (row.pk, trace)
        assert row.context["n"] == sum(INCREMENTS[entry] for entry in trace), (row.pk, row.context)
        if row.status == InstanceStatus.COMPLETED:
            final = "v1.second" if row.version.version == "1.0.0" else "v2.second"
            assert trace[-1] == final, (row.pk, row.version.version, trace)
        assert ("label" in row.context) == (row.version.version == "2.0.0"), row.pk
    # Every step run ended with an outcome; results written twice would show as two successes of one claim.
    assert not StepRun.objects.filter(finished_at__isnull=True).exists()
    claims = StepRun.objects.filter(outcome="succeeded").values_list("instance_id", "claim_revision")
    assert len(claims) == len(set(claims))
    migration = MigrationBatch.objects.get(kind="migrate")
    rollback = MigrationBatch.objects.get(kind="rollback")
    assert migration.succeeded > 0 and rollback.total == migration.succeeded  # the two really overlapped the steps
    for batch in MigrationBatch.objects.all():
        assert batch.is_finished and batch.processed == batch.total == batch.items.count()
        assert not BatchItem.objects.filter(batch=batch, state="pending").exists()
    exact = {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT version_id, status, count(*) FROM workflows_workflowinstance GROUP BY 1, 2")
        for version_id, status, n in cursor.fetchall():
            exact.setdefault(version_id, {})[status] = n
    assert status_counts_by_version() == exact
