"""Batch migration: research-agent 1.0.0 -> 2.0.0 with snapshot, validation and audit, executed by a
real Celery worker on PostgreSQL, end to end in instances/second (started at once, as `workflows migrate`
does, and previewed then confirmed, as the dashboard does), both ways a migration can be written:
declared operations (research-agent's own: rename raw_text, default sources; the batch runs them in
SQL) and a function doing the same (bench-agent-function: contexts go through Python). Against two
baselines measured in the same run: the naive per-instance ORM loop (load all, loop, save() each;
measured on a sample and scaled) and the floor, one raw SQL UPDATE doing the equivalent JSON change over the same rows.
Also the rollback of the declared batch, and the worker's peak memory for a small and a large
batch (it must not grow with batch size).

Each context profile (bench/contexts.py: small, about 150 B; agent, 4 KB median with a 64 KB tail)
is measured against its own baselines in the same run; BENCH_PROFILE=small or agent runs one.
Targets: >= 10,000 instances/s (small), >= 20x the naive loop, within 2x of the floor.

BENCH_LONG=1 (not in CI) migrates 100,000 then 1,000,000 instances of one profile (BENCH_PROFILE,
default small; declared operations, or with BENCH_FUNCTION=1 the function): throughput, worker and
PostgreSQL memory, WAL written, and how time grows.

    python bench/migration.py [--quick]
"""

from __future__ import annotations

import json
import os
import time

from common import QUICK, print_table, purge_broker, setup_django, size, timed, truncate, vacuum_analyze
from contexts import POOL, describe, pool, profiles_to_run
from resources import BackendMemory, wal_bytes_since, wal_lsn, worker_children_peak_kib

DECLARED, FUNCTION = "research-agent", "bench-agent-function"


def fill(total: int, profile: str = "small", workflow: str = DECLARED) -> None:
    """`total` waiting 1.0.0 instances of `workflow` at step summarize (no task sent: nothing runs
    them), their contexts cycling through the profile's pool, each with a topic of its own."""
    from django.db import connection

    from workflows_admin.workflows.models import WorkflowVersion

    version = WorkflowVersion.objects.get(workflow__name=workflow, version="1.0.0")
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE IF NOT EXISTS bench_pool (i int PRIMARY KEY, context jsonb)")
        cursor.execute("TRUNCATE bench_pool")
        cursor.execute(
            "INSERT INTO bench_pool SELECT n - 1, value "
            "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS p(value, n)",
            [json.dumps([json.loads(text) for text in pool(profile)])],
        )
        cursor.execute(
            """
            INSERT INTO workflows_workflowinstance
                (workflow_id, version_id, status, current_step, context, revision, attempt, start_key,
                 status_reason, patches, created_at, updated_at)
            SELECT %s, %s, 'waiting', 'summarize', pool.context || jsonb_build_object('topic', 'topic ' || g),
                   1, 0, '', 'waiting for a human review', '{}'::jsonb, now(), now()
            FROM generate_series(1, %s) AS g JOIN bench_pool pool ON pool.i = g %% %s
            ORDER BY g
            """,
            [version.workflow_id, version.pk, total, POOL],
        )
    vacuum_analyze()


def run_batch(total: int, profile: str = "small", workflow: str = DECLARED) -> tuple[float, int]:
    """Migrate `total` fresh instances with a fresh worker; return (seconds end to end, worker peak KiB)."""
    truncate()
    fill(total, profile, workflow)
    return migrate_filled(total, workflow=workflow)


def run_previewed_batch(total: int, profile: str = "small", workflow: str = DECLARED) -> tuple[float, float]:
    """The dashboard's way: preview (a dry run that freezes the selection as pending items), then
    confirm. Returns (seconds the preview took, seconds from the confirm to the end)."""
    from workflows_admin.workflows.services.batches import preview_migration

    truncate()
    fill(total, profile, workflow)
    with timed() as previewing:
        preview = preview_migration(workflow, source="1.0.0", target="2.0.0", freeze=True, actor="system:bench")
    seconds, _ = migrate_filled(total, selection_token=preview.selection_token, workflow=workflow)
    return previewing(), seconds


def migrate_filled(total: int, selection_token: str | None = None, workflow: str = DECLARED) -> tuple[float, int]:
    """Migrate the `total` instances `fill` made, with a fresh worker (-c 2), and wait for the end.

    Without a preview's `selection_token` the batch takes its instances as it reaches them.
    """
    from workflows_admin.workflows.services.batches import start_migration

    return run_with_worker(
        total,
        lambda: start_migration(
            workflow,
            source="1.0.0",
            target="2.0.0",
            actor="system:bench",
            chunk_size=1000,
            selection_token=selection_token,
        ),
    )


def roll_back_last(total: int) -> float:
    """Roll back the newest migration batch with a fresh worker (-c 2): seconds from the request
    (which freezes one item per instance, as the dashboard's confirm does) to the end."""
    from workflows_admin.workflows.models import MigrationBatch
    from workflows_admin.workflows.services.batches import start_rollback

    undone = MigrationBatch.objects.filter(kind=MigrationBatch.Kind.MIGRATE).order_by("-pk").first()
    assert undone is not None
    return run_with_worker(total, lambda: start_rollback(undone.pk, actor="system:bench"))[0]


def run_with_worker(total: int, start) -> tuple[float, int]:
    """Start a batch with `start()` before a fresh worker (-c 2) and wait for its end; return
    (seconds from the start, the worker's peak KiB). Every one of the `total` must succeed."""
    from tests.worker import WorkerProcess
    from workflows_admin.workflows.models import MigrationBatch

    purge_broker()
    worker = WorkerProcess(concurrency=2, extra_env={"WORKFLOWS_MODULES": os.environ["WORKFLOWS_MODULES"]}).start()
    try:
        with timed() as elapsed:
            batch = start()
            while not MigrationBatch.objects.get(pk=batch.pk).is_finished:
                time.sleep(0.05)
        batch.refresh_from_db()
        assert batch.succeeded == total, (batch.state, batch.succeeded, batch.failed, batch.skipped, batch.conflicts)
        return elapsed(), worker_children_peak_kib(worker)
    finally:
        worker.stop()
        purge_broker()


def naive_loop(sample: int, profile: str) -> float:
    """The seed article's approach: load every instance, migrate in Python, save() one at a time."""
    from bench.bench_workflows import raw_text_to_enriched_text
    from workflows_admin.workflows.models import WorkflowInstance, WorkflowVersion

    truncate()
    fill(sample, profile)
    target = WorkflowVersion.objects.get(workflow__name="research-agent", version="2.0.0")
    with timed() as elapsed:
        for instance in list(WorkflowInstance.objects.all()):
            instance.context = raw_text_to_enriched_text(instance.context)
            instance.version = target
            instance.save()
    return elapsed()


def raw_sql_floor(total: int, profile: str) -> float:
    from django.db import connection

    from workflows_admin.workflows.models import WorkflowVersion

    truncate()
    fill(total, profile)
    target = WorkflowVersion.objects.get(workflow__name="research-agent", version="2.0.0")
    with timed() as elapsed, connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE workflows_workflowinstance
            SET context = (context - 'raw_text')
                          || jsonb_build_object('enriched_text', context -> 'raw_text', 'sources', '[]'::jsonb),
                version_id = %s, revision = revision + 1, updated_at = now()
            """,
            [target.pk],
        )
    return elapsed()


def profile_rows(profile: str) -> list[tuple[str, str]]:
    """The profile's batch, declared and as a function, started and previewed, against its own
    naive loop and floor."""
    # Agent contexts are 30 times the bytes: the full run keeps to the same 100,000 instances.
    small, large = size(10_000, 1_000), size(100_000, 2_000 if profile == "agent" else 5_000)
    sample = size(5_000, 500)
    small_time, small_peak = run_batch(small, profile)
    timings = {}
    for workflow in (DECLARED, FUNCTION):
        started, peak = run_batch(large, profile, workflow)
        if workflow == DECLARED:  # a rollback restores snapshots: the same work whatever the migration was
            rolled_back = roll_back_last(large)
        timings[workflow] = (started, peak, *run_previewed_batch(large, profile, workflow))
    naive = naive_loop(sample, profile) * large / sample
    floor = raw_sql_floor(large, profile)
    truncate()
    rows = [(f"[{profile}] {describe(profile)}", f"{large:,} instances")]
    for workflow, how in ((DECLARED, "declared operations"), (FUNCTION, "a function migrator")):
        started, _, preview_time, confirmed = timings[workflow]
        rows += [
            (f"our batch, {how}", f"{large / started:,.0f} instances/s ({started:.1f} s)"),
            (
                "  previewed, then confirmed",
                f"{large / confirmed:,.0f} instances/s from the confirm ({confirmed:.1f} s; "
                f"the preview before it {preview_time:.1f} s)",
            ),
            (
                "  vs floor",
                f"{started / floor:.2f}x the floor's time; previewed {confirmed / floor:.2f}x (target <= 2x)",
            ),
            ("  vs naive", f"{naive / started:.1f}x faster (target >= 20x)"),
        ]
    rows.append(
        (
            "rollback of the declared batch",
            f"{large / rolled_back:,.0f} instances/s ({rolled_back:.1f} s, its items frozen first; "
            f"{rolled_back / timings[DECLARED][0]:.2f}x the migration's time, {rolled_back / floor:.2f}x the floor's)",
        )
    )
    large_peak = timings[DECLARED][1]
    return [
        *rows,
        (f"naive ORM loop ({sample:,} sampled, scaled)", f"{large / naive:,.0f} instances/s ({naive:.1f} s)"),
        ("raw SQL UPDATE floor", f"{large / floor:,.0f} instances/s ({floor:.1f} s)"),
        (f"worker peak RSS, {small:,} batch", f"{small_peak / 1024:.0f} MiB ({small / small_time:,.0f} inst/s)"),
        (f"worker peak RSS, {large:,} batch", f"{large_peak / 1024:.0f} MiB (ratio {large_peak / small_peak:.2f})"),
        (
            f"worker peak RSS, {large:,} batch, function",
            f"{timings[FUNCTION][1] / 1024:.0f} MiB (ratio {timings[FUNCTION][1] / small_peak:.2f})",
        ),
    ]


def long_run(profile: str, workflow: str) -> None:
    """100,000 then 1,000,000 instances: throughput, memory, WAL, and how time grows (linear: 1.0)."""
    from django.db import connection

    rows = [(f"[{profile}] {describe(profile)}", f"{workflow}, one worker (-c 2), chunks of 1,000")]
    per_instance = {}
    for total in (100_000, 1_000_000):
        truncate()
        with timed() as filling:
            fill(total, profile, workflow)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_total_relation_size('workflows_workflowinstance')")
            table_bytes = cursor.fetchone()[0]
        lsn = wal_lsn()
        with BackendMemory() as backends:
            seconds, worker_peak = migrate_filled(total, workflow=workflow)
        wal = wal_bytes_since(lsn)
        per_instance[total] = seconds / total
        rows += [
            (f"{total:,}: batch", f"{total / seconds:,.0f} instances/s ({seconds:.1f} s; fill {filling():.0f} s)"),
            (f"{total:,}: worker peak RSS", f"{worker_peak / 1024:.0f} MiB"),
            (
                f"{total:,}: PostgreSQL backends",
                f"peak {backends.peak_kib / 1024:.0f} MiB private memory in all, {backends.largest_kib / 1024:.0f} MiB "
                "the largest one",
            ),
            (
                f"{total:,}: WAL written",
                f"{wal / 2**20:,.0f} MiB ({wal / total:,.0f} B per instance; table {table_bytes / 2**20:,.0f} MiB "
                "before)",
            ),
        ]
    growth = per_instance[1_000_000] / per_instance[100_000]
    rows.append(("time per instance, 1,000,000 / 100,000", f"{growth:.2f} (linear: 1.0)"))
    truncate()
    print_table("Batch migration, long mode: 100,000 and 1,000,000 instances", rows)


def main() -> None:
    setup_django()
    from workflows_admin.workflows.services.registry_sync import sync_registry

    sync_registry()
    if os.environ.get("BENCH_LONG") == "1" and not QUICK:
        long_run(os.environ.get("BENCH_PROFILE") or "small", FUNCTION if os.environ.get("BENCH_FUNCTION") else DECLARED)
        return
    rows = []
    for profile in profiles_to_run(os.environ.get("BENCH_PROFILE")):
        rows += profile_rows(profile)
    print_table(
        "Batch migration research-agent 1.0.0 -> 2.0.0, one worker (-c 2); target >= 10,000 instances/s (small)", rows
    )


if __name__ == "__main__":
    main()
