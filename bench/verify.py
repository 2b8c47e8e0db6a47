"""Verification of a deploy on the live population: `workflows verify research-agent --to 2.0.0 --sample
1000` at 100,000 and 1,000,000 instances (median of repeated runs, the queries it sends and the index
entries they may read), against the cost it avoids, measured in the same run: one GROUP BY over the
instances to find the strata. Targets: the 1,000,000 / 100,000 ratio under 1.5 (the cost does not grow
with the table) and a query count bounded by the strata (one for them, at most two per stratum and age
bucket plus a count for a short one), not by the instances.

    python bench/verify.py [--quick]
"""

from __future__ import annotations

import statistics
import time

from common import print_table, setup_django, size, timed, truncate, vacuum_analyze

STATUSES = ["pending", "running", "waiting", "parked", "completed", "completed", "failed", "waiting"]


def fill(total: int) -> None:
    """`total` research-agent 1.0.0 instances over 8 statuses, both steps, started over the last 60 days."""
    from django.db import connection

    from workflows_admin.workflows.models import WorkflowVersion

    version = WorkflowVersion.objects.get(workflow__name="research-agent", version="1.0.0")
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO workflows_workflowinstance
                (workflow_id, version_id, status, current_step, context, revision, attempt, start_key,
                 status_reason, patches, created_at, updated_at, move_pending)
            SELECT %s, %s, (%s::text[])[1 + g %% 8], (ARRAY['analyze', 'summarize'])[1 + (g / 8) %% 2],
                   jsonb_build_object('topic', 'topic ' || g, 'raw_text', 'some research text number ' || g),
                   1, 0, '', '', '{}'::jsonb, now() - (g %% 86400) * interval '1 minute', now(), false
            FROM generate_series(1, %s) AS g
            """,
            [version.workflow_id, version.pk, STATUSES, total],
        )
    vacuum_analyze()


def measure(repeats: int, sample: int) -> tuple[float, float, int, int, int]:
    """(median ms, p95 ms, queries, instances checked, strata) of verify with a sample of `sample`."""
    from django.db import connection

    from workflows_admin.workflows.services.verification import verify

    queries = []

    def count(execute, sql, params, many, context):
        queries.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        report = verify("research-agent", "2.0.0", sample=sample)
    assert report.ok, report.as_dict()["failures"]
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        verify("research-agent", "2.0.0", sample=sample)
        timings.append((time.perf_counter() - start) * 1000)
    timings.sort()
    p95 = timings[max(int(len(timings) * 0.95) - 1, 0)]
    return statistics.median(timings), p95, len(queries), report.checked, len(report.strata)


def group_by_strata() -> float:
    """The query the sampler does not run: the strata counted from the instances."""
    from django.db import connection

    with timed() as elapsed, connection.cursor() as cursor:
        cursor.execute(
            "SELECT version_id, current_step, status, count(*) FROM workflows_workflowinstance "
            "WHERE status IN ('pending', 'running', 'waiting', 'parked') GROUP BY 1, 2, 3"
        )
        cursor.fetchall()
    return elapsed() * 1000


def main() -> None:
    setup_django()
    from workflows_admin.workflows.services.registry_sync import sync_registry

    sync_registry()
    repeats, sample = size(10, 3), 1000
    sizes = [size(100_000, 10_000), size(1_000_000, 50_000)]
    results, scans = {}, {}
    for total in sizes:
        truncate()
        fill(total)
        results[total] = measure(repeats, sample)
        scans[total] = group_by_strata()
    truncate()
    rows = []
    for total in sizes:
        median, p95, queries, checked, strata = results[total]
        rows.append(
            (
                f"verify @ {total:,}",
                f"median {median:.0f} ms, p95 {p95:.0f} ms, {queries} queries, {checked} checked in {strata} strata",
            )
        )
        rows.append((f"GROUP BY strata over instances @ {total:,}", f"{scans[total]:.0f} ms (not run by verify)"))
    small, large = sizes
    rows.append((f"verify median {large:,} / {small:,}", f"{results[large][0] / results[small][0]:.2f} (target < 1.5)"))
    print_table(f"workflows verify research-agent --to 2.0.0 --sample {sample}, {repeats} runs", rows)


if __name__ == "__main__":
    main()
