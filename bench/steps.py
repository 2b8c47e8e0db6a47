"""Step execution: steps/second of 3-step instances run by one Celery worker on Redis, for each
context profile (bench/contexts.py: small, about 150 B; agent, 4 KB median with a 64 KB tail;
BENCH_PROFILE=small or agent runs one), against baselines measured on the same worker in the same
run: a no-op Celery task round trip, and the profile's floor, one task an instance that three times
reads the context, bumps it and writes it back with raw SQL (the steps run chained, one task an
instance, each result written). Target: per-step cost <= 2x the no-op (small), <= 2x the floor.

    python bench/steps.py [--quick]
"""

from __future__ import annotations

import json
import os

from common import print_table, purge_broker, setup_django, size, timed, wait_for
from contexts import POOL, describe, pool, profiles_to_run


def counted(tasks: int) -> None:
    from bench.bench_tasks import COUNTER_KEY, _counter

    wait_for(lambda: int(_counter.get(COUNTER_KEY) or 0) >= tasks, 1200)


def profile_rows(profile: str, instances: int, per_noop: float) -> list[tuple[str, str]]:
    """The profile's steps and its floor, on the running worker."""
    from bench.bench_tasks import COUNTER_KEY, _counter, rewrite_context
    from workflows_admin.workflows.models import InstanceStatus, WorkflowInstance
    from workflows_admin.workflows.services.instances import start_workflows

    steps = instances * 3
    contexts = [json.loads(pool(profile)[i % POOL]) for i in range(instances)]  # generated before the clock
    done_before = WorkflowInstance.objects.filter(status=InstanceStatus.COMPLETED).count()
    with timed() as step_time:
        for offset in range(0, instances, 1000):
            start_workflows("bench-3step", contexts[offset : offset + 1000])
        wait_for(
            lambda: WorkflowInstance.objects.filter(status=InstanceStatus.COMPLETED).count() >= done_before + instances,
            1200,
        )
    failed = WorkflowInstance.objects.exclude(status=InstanceStatus.COMPLETED).count()
    # The floor rewrites the same contexts (now completed) as many times as the steps did, one task
    # an instance as the steps ran (chained).
    ids = list(WorkflowInstance.objects.order_by("-pk").values_list("pk", flat=True)[:instances])
    _counter.set(COUNTER_KEY, 0)
    with timed() as floor_time:
        for instance_id in ids:
            rewrite_context.delay(instance_id, 3)
        counted(steps)
    per_step, per_floor = step_time() / steps, floor_time() / steps
    return [
        (f"[{profile}] {describe(profile)}", f"{instances:,} instances x 3 steps"),
        ("workflow steps", f"{steps / step_time():,.0f} steps/s ({per_step * 1000:.2f} ms each)"),
        (
            "floor: read, bump, write back in raw SQL",
            f"{steps / floor_time():,.0f} /s ({per_floor * 1000:.2f} ms each)",
        ),
        ("per-step cost / floor", f"{per_step / per_floor:.2f}x (target <= 2x)"),
        ("per-step cost / no-op task", f"{per_step / per_noop:.2f}x (target <= 2x, small)"),
        ("instances not completed", str(failed)),
    ]


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
        counted(20)
        start_workflows("bench-3step", [{"n": 0} for _ in range(10)])
        wait_for(lambda: WorkflowInstance.objects.filter(status=InstanceStatus.COMPLETED).count() >= 10, 60)

        _counter.set(COUNTER_KEY, 0)
        with timed() as noop_time:
            for i in range(steps):
                noop.delay(i)
            counted(steps)
        per_noop = noop_time() / steps
        rows = [("no-op task round trip", f"{steps / noop_time():,.0f} tasks/s ({per_noop * 1000:.2f} ms each)")]
        for profile in profiles_to_run(os.environ.get("BENCH_PROFILE")):
            rows += profile_rows(profile, instances, per_noop)
    finally:
        worker.stop()
        purge_broker()
    print_table(f"Step execution: {instances} instances x 3 steps, one worker (-c 2, prefork), Redis broker", rows)


if __name__ == "__main__":
    main()
