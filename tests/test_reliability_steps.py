"""Nothing is lost or applied twice when the worker dies, the broker goes away or the database drops
connections while instances run their steps. Real worker, real beat, real Redis, real PostgreSQL.
"""

import time
from collections import Counter

import pytest
from django.utils import timezone

from workflows_admin.workflows.models import InstanceStatus, StepRun, WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.services.registry_sync import sync_registry

from .faults import BeatProcess, PrivateRedis, run_every, terminate_other_connections
from .worker import WorkerProcess, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
INSTANCES = 300


@pytest.fixture
def private_redis():
    redis = PrivateRedis().start()
    yield redis
    redis.remove()


@pytest.fixture
def fault_env(private_redis):
    """Short leases and grace periods so recovery happens within the test's patience."""
    sync_registry()
    run_every("Recover stalled steps", 2)
    return {
        "CELERY_BROKER_URL": private_redis.url,
        "WORKFLOWS_STEP_LEASE_SECONDS": "3",
        "WORKFLOWS_PENDING_GRACE_SECONDS": "3",
        "CELERY_VISIBILITY_TIMEOUT": "10",
        "WORKFLOWS_STEP_CHAIN_SECONDS": "0",  # one message per step: more to lose
        "TOY_STEP_SECONDS": "0.02",
    }


def seed_pending(n: int) -> list[int]:
    """Pending instances with no task sent: the recovery task (via beat) is what starts them."""
    version = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    long_ago = timezone.now() - timezone.timedelta(minutes=10)
    rows = WorkflowInstance.objects.bulk_create(
        WorkflowInstance(
            workflow_id=version.workflow_id,
            version=version,
            status=InstanceStatus.PENDING,
            current_step="first",
            context={"n": 0},
            created_at=long_ago,
            updated_at=long_ago,
        )
        for _ in range(n)
    )
    return [row.pk for row in rows]


def completed() -> int:
    return WorkflowInstance.objects.filter(status=InstanceStatus.COMPLETED).count()


def assert_each_step_applied_exactly_once(ids: list[int]) -> None:
    assert completed() == len(ids)
    for instance in WorkflowInstance.objects.filter(pk__in=ids):
        assert instance.context["trace"] == ["v1.first", "v1.second"], instance.pk
        assert instance.context["n"] == 2
    succeeded = Counter(
        StepRun.objects.filter(instance_id__in=ids, outcome=StepRun.Outcome.SUCCEEDED).values_list(
            "instance_id", "step"
        )
    )
    assert set(succeeded.values()) == {1} and len(succeeded) == 2 * len(ids)


def run_with_fault(fault_env, inject) -> list[int]:
    ids = seed_pending(INSTANCES)
    worker = WorkerProcess(extra_env=fault_env).start()
    beat = BeatProcess(fault_env).start()
    try:
        wait_until(lambda: completed() >= INSTANCES // 5, timeout=120, message="a fifth of the instances done")
        worker = inject(worker) or worker
        wait_until(lambda: completed() == INSTANCES, timeout=240, message="every instance completed")
    finally:
        beat.stop()
        worker.stop()
    return ids


def test_steps_survive_a_broker_outage(fault_env, private_redis):
    def outage(worker):
        private_redis.stop()
        time.sleep(10)  # the outage itself: ten seconds without a broker
        private_redis.start()

    assert_each_step_applied_exactly_once(run_with_fault(fault_env, outage))


def test_steps_survive_dropped_database_connections(fault_env):
    def drop_connections(worker):
        for _ in range(5):
            terminate_other_connections()
            time.sleep(1)

    assert_each_step_applied_exactly_once(run_with_fault(fault_env, drop_connections))


def test_steps_survive_worker_sigkill(fault_env):
    def crash_twice(worker):
        for _ in range(2):
            worker.kill()
            worker = WorkerProcess(extra_env=fault_env).start()
            time.sleep(2)
        return worker

    assert_each_step_applied_exactly_once(run_with_fault(fault_env, crash_twice))
