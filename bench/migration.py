"""Batch migration: research-agent 1.0.0 -> 2.0.0 with snapshot, validation and audit, executed by a
real Celery worker on PostgreSQL, end to end in instances/second (started at once, as `workflows migrate`
does, and previewed then confirmed, as the dashboard does), against two baselines measured in
the same run: the naive per-instance ORM loop (load all, loop, save() each; measured on a sample and
scaled) and the floor, one raw SQL UPDATE doing the equivalent JSON change over the same rows.
Also the worker's peak memory for a small and a large batch (it must not grow with batch size).
Targets: >= 10,000 instances/s, >= 20x the naive loop, within 3x of the floor.

    python bench/migration.py [--quick]
"""

from __future__ import annotations

import time
from pathlib import Path

from common import print_table, purge_broker, setup_django, size, timed, truncate, vacuum_analyze


def fill(total: int) -> None:
    """`total` running research-agent 1.0.0 instances at step summarize (no task sent: nothing runs them)."""
    from django.db import connection

    from workflows_admin.workflows.models import WorkflowVersion

    version = WorkflowVersion.objects.get(workflow__name="research-agent", version="1.0.0")
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO workflows_workflowinstance
                (workflow_id, version_id, status, current_step, context, revision, attempt, start_key,
                 status_reason, patches, created_at, updated_at)
            SELECT %s, %s, 'waiting', 'summarize',
                   jsonb_build_object('topic', 'topic ' || g, 'raw_text', 'some research text number ' || g,
                                      'analysis', jsonb_build_object('words', 5, 'keywords', '["research"]'::jsonb)),
                   1, 0, '', 'waiting for a human review', '{}'::jsonb, now(), now()
            FROM generate_series(1, %s) AS g
            """,
            [version.workflow_id, version.pk, total],
        )
    vacuum_analyze()


def worker_children_peak_kib(worker) -> int:
    """Peak resident memory (VmHWM) over the worker's pool processes."""
    peak = 0
    for child in Path(f"/proc/{worker.process.pid}/task").glob("*/children"):
        for pid in child.read_text().split():
            status = Path(f"/proc/{pid}/status").read_text()
            peak = max(peak, int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))))
    return peak


def run_batch(total: int) -> tuple[float, int]:
    """Migrate `total` fresh instances with a fresh worker; return (seconds end to end, worker peak KiB)."""
    truncate()
    fill(total)
    return migrate_filled(total)


def run_previewed_batch(total: int) -> tuple[float, float]:
    """The dashboard's way: preview (a dry run that freezes the selection as pending items), then
    confirm. Returns (seconds the preview took, seconds from the confirm to the end)."""
    from workflows_admin.workflows.services.batches import preview_migration

    truncate()
    fill(total)
    with timed() as previewing:
        preview = preview_migration("research-agent", source="1.0.0", target="2.0.0", freeze=True, actor="system:bench")
    seconds, _ = migrate_filled(total, selection_token=preview.selection_token)
    return previewing(), seconds


def migrate_filled(total: int, selection_token: str | None = None) -> tuple[float, int]:
    """Migrate the `total` instances `fill` made, with a fresh worker (-c 2), and wait for the end.

    Without a preview's `selection_token` the batch takes its instances as it reaches them.
    """
    from tests.worker import WorkerProcess
    from workflows_admin.workflows.models import MigrationBatch
    from workflows_admin.workflows.services.batches import start_migration

    purge_broker()
    worker = WorkerProcess(concurrency=2).start()
    try:
        with timed() as elapsed:
            batch = start_migration(
                "research-agent",
                source="1.0.0",
                target="2.0.0",
                actor="system:bench",
                chunk_size=1000,
                selection_token=selection_token,
            )
            while not MigrationBatch.objects.get(pk=batch.pk).is_finished:
                time.sleep(0.05)
        batch.refresh_from_db()
        assert batch.succeeded == total, (batch.state, batch.succeeded, batch.failed, batch.skipped)
        return elapsed(), worker_children_peak_kib(worker)
    finally:
        worker.stop()
        purge_broker()


def naive_loop(sample: int) -> float:
    """The seed article's approach: load every instance, migrate in Python, save() one at a time."""
    from workflows_admin.demo.research_agent import raw_text_to_enriched_text
    from workflows_admin.workflows.models import WorkflowInstance, WorkflowVersion

    truncate()
    fill(sample)
    target = WorkflowVersion.objects.get(workflow__name="research-agent", version="2.0.0")
    with timed() as elapsed:
        for instance in list(WorkflowInstance.objects.all()):
            instance.context = raw_text_to_enriched_text(instance.context)
            instance.version = target
            instance.save()
    return elapsed()


def raw_sql_floor(total: int) -> float:
    from django.db import connection

    from workflows_admin.workflows.models import WorkflowVersion

    truncate()
    fill(total)
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


def main() -> None:
    setup_django()
    from workflows_admin.workflows.services.registry_sync import sync_registry

    sync_registry()
    small, large = size(10_000, 1_000), size(100_000, 5_000)
    sample = size(5_000, 500)
    small_time, small_peak = run_batch(small)
    large_time, large_peak = run_batch(large)
    preview_time, confirmed_time = run_previewed_batch(large)
    naive = naive_loop(sample) * large / sample
    floor = raw_sql_floor(large)
    truncate()
    rate = large / large_time
    print_table(
        f"Batch migration research-agent 1.0.0 -> 2.0.0, {large:,} instances, one worker (-c 2)",
        [
            ("our batch, end to end", f"{rate:,.0f} instances/s ({large_time:.1f} s; target >= 10,000/s)"),
            (
                "previewed, then confirmed",
                f"{large / confirmed_time:,.0f} instances/s from the confirm ({confirmed_time:.1f} s; "
                f"the preview before it {preview_time:.1f} s)",
            ),
            (f"naive ORM loop ({sample:,} sampled, scaled)", f"{large / naive:,.0f} instances/s ({naive:.1f} s)"),
            ("raw SQL UPDATE floor", f"{large / floor:,.0f} instances/s ({floor:.1f} s)"),
            ("ours / naive", f"{naive / large_time:.1f}x faster (target >= 20x)"),
            ("ours vs floor", f"{large_time / floor:.1f}x the floor's time (target <= 3x)"),
            (f"worker peak RSS, {small:,} batch", f"{small_peak / 1024:.0f} MiB ({small / small_time:,.0f} inst/s)"),
            (f"worker peak RSS, {large:,} batch", f"{large_peak / 1024:.0f} MiB (ratio {large_peak / small_peak:.2f})"),
        ],
    )


if __name__ == "__main__":
    main()
