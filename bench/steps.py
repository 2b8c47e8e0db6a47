"""Step execution: steps/second of 3-step instances run by one Celery worker on Redis, against a no-op
Celery task round trip measured on the same worker in the same run. Target: per-step cost <= 2x the no-op.

    python bench/steps.py [--quick]
"""

from __future__ import annotations

from common import print_table, purge_broker, setup_django, size, timed, wait_for


def main() -> None:
    setup_django()
    from bench.bench_tasks import COUNTER_KEY, _counter, noop
    from tests.worker import WorkerProcess
    from workflows_admin.workflows.models import InstanceStatus, WorkflowInstance
    from workflows_admin.workflows.services.instances import start_workflows
    from workflows_admin.workflows.services.registry_sync import sync_registry

    sync_registry()
    instances = size(2000, 100)
    steps = instances * 3
    purge_broker()
    worker = WorkerProcess(
        concurrency=2,
        include=("bench.bench_tasks",),
        extra_env={"WORKFLOWS_MODULES": "workflows_admin.demo.research_agent,bench.bench_workflows"},
    ).start()
    try:
        # Warm both paths (imports, connections) before measuring.
        _counter.set(COUNTER_KEY, 0)
        for i in range(20):
            noop.delay(i)
        wait_for(lambda: int(_counter.get(COUNTER_KEY) or 0) >= 20, 60)
        start_workflows("bench-3step", [{"n": 0} for _ in range(10)])
        wait_for(lambda: WorkflowInstance.objects.filter(status=InstanceStatus.COMPLETED).count() >= 10, 60)

        _counter.set(COUNTER_KEY, 0)
        with timed() as noop_time:
            for i in range(steps):
                noop.delay(i)
            wait_for(lambda: int(_counter.get(COUNTER_KEY) or 0) >= steps, 600)

        done_before = WorkflowInstance.objects.filter(status=InstanceStatus.COMPLETED).count()
        with timed() as step_time:
            for offset in range(0, instances, 1000):
                start_workflows("bench-3step", [{"n": 0} for _ in range(min(1000, instances - offset))])
            wait_for(
                lambda: (
                    WorkflowInstance.objects.filter(status=InstanceStatus.COMPLETED).count() >= done_before + instances
                ),
                1200,
            )
        failed = WorkflowInstance.objects.exclude(status=InstanceStatus.COMPLETED).count()
    finally:
        worker.stop()
        purge_broker()

    per_noop = noop_time() / steps
    per_step = step_time() / steps
    print_table(
        f"Step execution: {instances} instances x 3 steps, one worker (-c 2, prefork), Redis broker",
        [
            ("no-op task round trip", f"{steps / noop_time():,.0f} tasks/s ({per_noop * 1000:.2f} ms each)"),
            ("workflow steps", f"{steps / step_time():,.0f} steps/s ({per_step * 1000:.2f} ms each)"),
            ("per-step cost / no-op task", f"{per_step / per_noop:.2f}x (target <= 2x)"),
            ("instances not completed", str(failed)),
        ],
    )


if __name__ == "__main__":
    main()
