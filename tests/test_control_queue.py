"""Control tasks (rollout ticks, samples, recovery, cleanup...) have a queue of their own: a backlog of
long steps does not delay a rollout's decision."""

import pytest
from django.conf import settings
from django.utils import timezone

from workflows_admin.workflows import tasks
from workflows_admin.workflows.models import InstanceStatus, Rollout, StepRun, WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.services import rollouts
from workflows_admin.workflows.services.instances import start_workflows
from workflows_admin.workflows.services.lifecycle import make_current
from workflows_admin.workflows.services.registry_sync import sync_registry

from .worker import ROOT, WorkerProcess, purge_broker, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

STEP_SECONDS = 20


def test_every_periodic_task_is_routed_to_the_control_queue():
    from workflows_admin.workflows.services.schedules import PERIODIC_TASKS

    assert {task for task, _ in PERIODIC_TASKS.values()} <= {
        name for name, route in settings.CELERY_TASK_ROUTES.items() if route == {"queue": "control"}
    }
    assert tasks.run_step.name not in settings.CELERY_TASK_ROUTES  # steps stay on the default queue


def queues_consumed(workers: list[list[str]]) -> list[set[str]]:
    """Each worker command's -Q queues (a worker without -Q would take every queue)."""
    return [set(args[args.index("-Q") + 1].split(",")) if "-Q" in args else {"*"} for args in workers]


def test_the_demo_and_compose_run_a_worker_for_control_tasks_alone():
    from workflows_admin.workflows.management.commands import demo

    every = {queue.name for queue in settings.CELERY_TASK_QUEUES}
    demo_workers = [args for args in demo.commands(8000).values() if "worker" in args]
    compose = (ROOT / "compose.yaml").read_text()
    compose_workers = [
        line.split("command:", 1)[1].split()
        for line in compose.splitlines()
        if line.strip().startswith("command: celery") and " worker" in line
    ]
    for layout in (queues_consumed(demo_workers), queues_consumed(compose_workers)):
        assert {"control"} in layout  # the control tasks' own worker
        assert set().union(*layout) == every  # and every queue has a worker
    assert "-Q control" in (ROOT / "Dockerfile").read_text()


def test_a_rollout_tick_runs_while_the_step_worker_is_busy_and_steps_are_queued():
    if not settings.CELERY_BROKER_URL.startswith(("redis://", "amqp://")):
        pytest.skip("worker tests need CELERY_BROKER_URL=redis://... (or amqp://)")
    purge_broker()
    sync_registry()
    make_current(WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0"))
    steps = WorkerProcess(concurrency=1, queues=("celery", "batches"))
    control = WorkerProcess(concurrency=1, queues=("control",))
    try:
        steps.start(wait=False)
        control.start(wait=False)
        steps.wait_ready()
        control.wait_ready()
        # One step process, busy for STEP_SECONDS per instance: a backlog of minutes.
        backlog = start_workflows("toy", [{"n": 0, "sleep": STEP_SECONDS}] * 4, version="1.0.0")
        ids = [i.pk for i in backlog]
        wait_until(
            lambda: WorkflowInstance.objects.filter(pk__in=ids, status=InstanceStatus.RUNNING).exists(),
            timeout=30,
            message="the step worker busy",
        )
        t0 = timezone.now()
        gates = [{"metric": "step_failure_rate", "threshold": 0.1, "min_samples": 10}]
        rollout = rollouts.start_rollout("toy", "2.0.0", strategy="linear", gates=gates, on_breach="keep", now=t0)
        target = WorkflowVersion.objects.get(workflow__name="toy", version="2.0.0")
        failing = start_workflows("toy", [{"n": 0, "label": "x"}] * 10, version="2.0.0")  # their steps queue too
        StepRun.objects.bulk_create(
            StepRun(
                instance=i,
                version=target,
                step="first",
                attempt=1,
                claim_revision=2,
                outcome="failed",
                started_at=t0,
                finished_at=timezone.now(),
                error="boom",
            )
            for i in failing
        )
        tasks.tick_rollouts.delay()
        wait_until(
            lambda: Rollout.objects.get(pk=rollout.pk).state == Rollout.State.HALTED,
            timeout=STEP_SECONDS / 2,
            message="the tick to halt the rollout",
        )
        # Decided while the step backlog was still there.
        assert WorkflowInstance.objects.filter(pk__in=ids).exclude(status=InstanceStatus.COMPLETED).count() >= 3
        assert WorkflowInstance.objects.filter(pk__in=[i.pk for i in failing], status=InstanceStatus.PENDING).count()
    finally:
        steps.kill()  # mid-step: no point waiting for it
        control.stop()
        purge_broker()
