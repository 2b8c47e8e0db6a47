"""Lifecycle reads at 100,000 and 1,000,000 instances over 10 versions: version_lifecycle (in flight,
oldest in flight, drained-at per version), code_guard_flags, patch_usage and preview_cleanup (the
dry run the dashboard shows). Median and p95 of repeated calls, and the ratio between the two sizes.
5 % of the instances are in flight, as in a long-running deployment where most runs have finished.

    python bench/lifecycle.py [--quick]
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta

from common import print_table, setup_django, size, truncate, vacuum_analyze

# 1 in 20 in flight: pending, running, waiting or parked; the rest finished.
STATUSES = ["pending", "running", "waiting", "parked"] + ["completed"] * 70 + ["failed"] * 6


def fill(total: int) -> None:
    """Insert instances straight in SQL (generate_series), started over the last ~35 days."""
    from django.db import connection

    from workflows_admin.workflows.models import WorkflowVersion

    versions = list(WorkflowVersion.objects.filter(workflow__name="bench-10v").order_by("major"))
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO workflows_workflowinstance
                (workflow_id, version_id, status, current_step, context, revision, attempt, start_key,
                 status_reason, patches, created_at, updated_at)
            SELECT %s, (%s::bigint[])[1 + g %% 10], (%s::text[])[1 + (g / 10) %% 80], 'two',
                   jsonb_build_object('n', g), 1, 0, '', '', '{}'::jsonb,
                   now() - (g %% 50000) * interval '1 minute', now()
            FROM generate_series(1, %s) AS g
            """,
            [versions[0].workflow_id, [v.pk for v in versions], STATUSES, total],
        )


def measure(call, repeats: int) -> tuple[float, float]:
    call()  # warm caches
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        timings.append((time.perf_counter() - start) * 1000)
    timings.sort()
    return statistics.median(timings), timings[max(int(len(timings) * 0.95) - 1, 0)]


def main() -> None:
    setup_django()
    from django.utils import timezone

    from workflows_admin.workflows import selectors
    from workflows_admin.workflows.models import Patch, Workflow
    from workflows_admin.workflows.services.cleanup import preview_cleanup
    from workflows_admin.workflows.services.registry_sync import sync_registry

    sync_registry()
    workflow = Workflow.objects.get(name="bench-10v")
    # Stale after 30 days, only reported: the preview then has work to list on every version.
    Workflow.objects.filter(pk=workflow.pk).update(max_lifetime=timedelta(days=30), stale_policy="report")
    # A patch introduced 10 days ago: in-flight instances split between its two branches.
    Patch.objects.get_or_create(
        workflow=workflow, name="bench-patch", defaults={"introduced_at": timezone.now() - timedelta(days=10)}
    )
    calls = {
        "version_lifecycle()": lambda: selectors.version_lifecycle(),
        "code_guard_flags()": lambda: selectors.code_guard_flags(),
        "patch_usage(workflow)": lambda: selectors.patch_usage(workflow),
        "preview_cleanup()": lambda: preview_cleanup(),
    }
    repeats = size(30, 5)
    sizes = [size(100_000, 10_000), size(1_000_000, 100_000)]
    results = {}
    for total in sizes:
        truncate()
        fill(total)
        vacuum_analyze()
        for label, call in calls.items():
            results[(label, total)] = measure(call, repeats)
    truncate()

    rows = []
    small, large = sizes
    for label in calls:
        for total in sizes:
            median, p95 = results[(label, total)]
            rows.append((f"{label} @ {total:,}", f"median {median:.1f} ms, p95 {p95:.1f} ms"))
        rows.append(
            (f"{label} p95 {large:,} / {small:,}", f"{results[(label, large)][1] / results[(label, small)][1]:.2f}")
        )
    print_table(f"Lifecycle reads, 10 versions, 5 % in flight, {repeats} calls each", rows)


if __name__ == "__main__":
    main()
