"""Safe points and auto-upgrade, measured against plain steps in the same run, one worker on Redis.

1. Plain steps: instances x 3 steps pinned on 1.0.0 (nothing pending at any boundary).
2. Auto-upgrade: the same on an auto-upgrade 1.0.0 whose current version is 2.0.0: each instance's
   first boundary applies its upgrade in the step's own transaction. The cost of that step against
   a plain one is (auto time - plain time) / instances + one plain step. Target <= 1.5x.
3. A batch over a stepping population: 20,000 instances (200 in quick mode), half of them stepping
   (a threads worker, -c 16, runs them; step "two" sleeps 0.5 s), half waiting; a live batch, its
   chunks on a worker of their own, migrates all of them: running steps are waited for, never
   re-run (no step run discarded, no step twice in any instance's trace). Its time is shown beside
   the same batch over the same number of idle (waiting) instances. The stepping worker stops
   (warm) once the batch is done.

    python bench/safe_points.py [--quick]
"""

from __future__ import annotations

from common import print_table, purge_broker, setup_django, size, timed, truncate, wait_for


def main() -> None:
    setup_django()
    from django.db.models import Q
    from django.utils import timezone

    from tests.worker import WorkerProcess
    from workflows_admin.workflows.models import (
        InstanceStatus,
        MigrationBatch,
        StepRun,
        WorkflowInstance,
        WorkflowVersion,
    )
    from workflows_admin.workflows.services import batches, lifecycle, upgrades
    from workflows_admin.workflows.services.instances import start_workflows
    from workflows_admin.workflows.services.registry_sync import sync_registry

    sync_registry()
    v1 = WorkflowVersion.objects.get(workflow__name="bench-upgrade", version="1.0.0")
    v2 = WorkflowVersion.objects.get(workflow__name="bench-upgrade", version="2.0.0")
    instances = size(2000, 100)
    modules = {"WORKFLOWS_MODULES": "workflows_admin.demo.research_agent,bench.bench_workflows"}

    def completed() -> int:
        return WorkflowInstance.objects.filter(status=InstanceStatus.COMPLETED).count()

    def run_all(before_start=None) -> float:
        """Queue `instances` on 1.0.0 with no worker running, then time one worker through them all."""
        done = completed()
        for offset in range(0, instances, 1000):
            start_workflows("bench-upgrade", [{"n": 0}] * min(1000, instances - offset), version="1.0.0")
        if before_start:
            before_start()
        worker = WorkerProcess(concurrency=2, extra_env=modules).start()
        try:
            with timed() as elapsed:
                wait_for(lambda: completed() >= done + instances, 1200)
        finally:
            worker.stop()
        return elapsed()

    def upgrade_to_v2() -> None:
        upgrades.set_upgrade_policy(v1, "auto")
        lifecycle.make_current(v2)  # 1.0.0's queued instances now move at their first boundary

    purge_broker()
    try:
        lifecycle.make_current(v1)
        run_all()  # warm up imports, connections and caches
        truncate()
        plain = run_all()
        auto = run_all(upgrade_to_v2)
        upgraded = MigrationBatch.objects.get(auto_upgrade=True).succeeded
    finally:
        purge_broker()
    per_plain = plain / (instances * 3)
    upgrade_step = (auto - plain) / instances + per_plain

    # 3. A live batch over a population half of which is stepping (0.5 s steps), half idle, then the
    # same batch over a population all idle.
    upgrades.set_upgrade_policy(v1, "pinned")
    population = size(20000, 200)
    pause = 0.5

    def idle_instances(count: int) -> None:
        now = timezone.now()
        rows = [
            WorkflowInstance(
                workflow_id=v1.workflow_id,
                version=v1,
                status=InstanceStatus.WAITING,
                current_step="two",
                context={"n": i, "ran": []},
                created_at=now,
                updated_at=now,
            )
            for i in range(count)
        ]
        WorkflowInstance.objects.bulk_create(rows, batch_size=1000)

    truncate()
    lifecycle.make_current(v1)
    purge_broker()
    idle_instances(population // 2)
    # The chunks get a worker of their own, as a deployment routes the batches queue: queued behind
    # the steps, the batch would measure how long a chunk task waits for a free thread.
    chunks = WorkerProcess(concurrency=2, queues=("batches", "control"), extra_env=modules).start()
    stepping = WorkerProcess(concurrency=16, pool="threads", queues=("celery",), extra_env=modules).start()
    try:
        for offset in range(0, population - population // 2, 1000):
            count = min(1000, population - population // 2 - offset)
            start_workflows("bench-upgrade", [{"n": 0, "pause": pause}] * count, version="1.0.0")
        wait_for(lambda: WorkflowInstance.objects.filter(status=InstanceStatus.RUNNING).count() >= 8, 120)
        running_at_start = WorkflowInstance.objects.filter(status=InstanceStatus.RUNNING).count()
        with timed() as busy_time:
            batch = batches.start_migration("bench-upgrade", source="1.0.0", target="2.0.0", chunk_size=500)
            wait_for(lambda: MigrationBatch.objects.get(pk=batch.pk).is_finished, 600)
        busy = MigrationBatch.objects.get(pk=batch.pk)
    finally:
        stepping.stop()  # a warm shutdown: the steps running now finish and are recorded
        chunks.stop()
        purge_broker()
    rerun = StepRun.objects.filter(outcome=StepRun.Outcome.DISCARDED).count()
    steps_run = StepRun.objects.count()
    twice = sum(
        1
        for (ran,) in WorkflowInstance.objects.values_list("context__ran")
        if ran and len({entry.split(":")[1] for entry in ran}) != len(ran)
    )

    truncate()
    idle_instances(population)
    purge_broker()
    idle_worker = WorkerProcess(concurrency=2, extra_env=modules).start()
    try:
        with timed() as idle_time:
            idle = batches.start_migration("bench-upgrade", source="1.0.0", target="2.0.0", chunk_size=500)
            wait_for(lambda: MigrationBatch.objects.get(pk=idle.pk).is_finished, 600)
    finally:
        idle_worker.stop()
        purge_broker()
    moved_idle = WorkflowInstance.objects.filter(Q(version=v2)).count()

    print_table(
        f"Safe points: {instances} instances x 3 steps, one worker (-c 2); a batch over {population:,} instances",
        [
            ("plain steps", f"{instances * 3 / plain:,.0f} steps/s ({per_plain * 1000:.2f} ms each)"),
            ("auto-upgrade run", f"{instances * 3 / auto:,.0f} steps/s; {upgraded} instances upgraded"),
            (
                "step applying an auto-upgrade / plain step",
                f"{upgrade_step / per_plain:.2f}x ({upgrade_step * 1000:.2f} ms; target <= 1.5x)",
            ),
            (
                "batch over a stepping population",
                f"{busy_time():.2f} s, {busy.succeeded} moved, {running_at_start} steps running at its start "
                f"({pause} s each, {steps_run} steps recorded by the end); steps re-run: {rerun}, "
                f"instances with a step twice: {twice}",
            ),
            ("same batch over idle instances", f"{idle_time():.2f} s, {moved_idle} moved"),
            ("stepping / idle", f"{busy_time() / idle_time():.2f}x (the running steps are waited for)"),
        ],
    )


if __name__ == "__main__":
    main()
