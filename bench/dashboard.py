"""Dashboard: server time of the overview and a version page at 100,000 and 1,000,000 instances over
10 versions (median and p95 of repeated requests by a logged-in client), the ratio between the two
sizes (cost must not grow with the instance count) and the number of queries per page.
Targets: p95 under 50 ms at 1,000,000; 1,000,000 / 100,000 under 1.5; constant query counts.

BENCH_LONG=1 (not in CI) measures the same pages at 1,000,000 and 10,000,000 instances, then the
batch page's progress poll (htmx, every 0.2 s from a thread of its own) while a 1,000,000-instance
batch runs on a worker.

    python bench/dashboard.py [--quick]
"""

from __future__ import annotations

import os
import statistics
import threading
import time

from common import QUICK, print_table, setup_django, size, truncate, vacuum_analyze

LONG = os.environ.get("BENCH_LONG") == "1" and not QUICK

STATUSES = ["pending", "running", "waiting", "completed", "completed", "completed", "failed", "parked"]


def fill(total: int) -> None:
    """Insert instances straight in SQL (generate_series): spread over 10 versions and 8 statuses."""
    from django.db import connection

    from workflows_admin.workflows.models import WorkflowVersion

    versions = list(WorkflowVersion.objects.filter(workflow__name="bench-10v").order_by("major"))
    version_ids = [v.pk for v in versions]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO workflows_workflowinstance
                (workflow_id, version_id, status, current_step, context, revision, attempt, start_key,
                 status_reason, patches, created_at, updated_at)
            SELECT %s, (%s::bigint[])[1 + g %% 10], (%s::text[])[1 + (g / 10) %% 8], 'two',
                   jsonb_build_object('n', g, 'topic', 'bench'), 1, 0, '', '', '{}'::jsonb,
                   now() - (g %% 5000) * interval '1 minute', now()
            FROM generate_series(1, %s) AS g
            """,
            [versions[0].workflow_id, version_ids, STATUSES, total],
        )


def _percentiles(timings: list[float]) -> tuple[float, float]:
    timings = sorted(timings)
    return statistics.median(timings), timings[max(int(len(timings) * 0.95) - 1, 0)]


def measure(client, url: str, repeats: int) -> tuple[float, float, int]:
    from django.db import connection

    client.get(url)  # warm caches and templates
    queries = []

    def count(execute, sql, params, many, context):
        queries.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        client.get(url)
        timings.append((time.perf_counter() - start) * 1000)
    return (*_percentiles(timings), len(queries))


def poll_while_a_batch_runs(user, total: int) -> list[tuple[str, str]]:
    """The progress poll of a running batch's page, as htmx sends it, while `total` instances migrate."""
    from django.db import connection
    from django.test import Client
    from django.urls import reverse
    from migration import fill as fill_research_agent
    from migration import migrate_filled

    from workflows_admin.workflows.models import MigrationBatch

    truncate()
    fill_research_agent(total)
    timings: list[float] = []
    queries: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        client = Client()
        client.force_login(user)
        executed: list[str] = []

        def count(execute, sql, params, many, context):
            executed.append(sql)
            return execute(sql, params, many, context)

        try:
            while not stop.wait(0.2):
                batch = MigrationBatch.objects.filter(state="running").order_by("-pk").first()
                if batch is None:
                    continue
                executed.clear()
                with connection.execute_wrapper(count):
                    start = time.perf_counter()
                    response = client.get(reverse("dashboard:batch", args=[batch.pk]), HTTP_HX_REQUEST="true")
                    elapsed = (time.perf_counter() - start) * 1000
                if response.status_code == 200:  # a finished batch answers with a refresh instead
                    timings.append(elapsed)
                    queries.append(len(executed))
        finally:
            connection.close()

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        seconds, _ = migrate_filled(total)
    finally:
        stop.set()
        poller.join()
    median, p95 = _percentiles(timings)
    return [
        (
            f"batch progress poll, {total:,}-instance batch running",
            f"median {median:.1f} ms, p95 {p95:.1f} ms, {max(queries)} queries at most, {len(timings)} polls "
            f"(batch {total / seconds:,.0f} instances/s)",
        )
    ]


def pages() -> list[tuple[str, str]]:
    from django.urls import reverse

    from workflows_admin.workflows.models import WorkflowVersion

    version = WorkflowVersion.objects.get(workflow__name="bench-10v", version="5.0.0")
    return [
        ("overview", reverse("dashboard:overview")),
        ("version page", reverse("dashboard:version", args=[version.pk])),
    ]


def main() -> None:
    setup_django()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client, override_settings

    from workflows_admin.workflows.services.registry_sync import sync_registry

    sync_registry()
    user, _ = get_user_model().objects.get_or_create(
        username="bench", defaults={"is_superuser": True, "is_staff": True}
    )
    client = Client()
    client.force_login(user)
    # Pages render straight from static/ (production serves collected, hashed copies).
    override_settings(
        STORAGES={
            **settings.STORAGES,
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        }
    ).enable()
    repeats = size(50, 10)
    sizes = [1_000_000, 10_000_000] if LONG else [size(100_000, 10_000), size(1_000_000, 100_000)]
    results: dict[tuple[str, int], tuple[float, float, int]] = {}
    for total in sizes:
        truncate()
        fill(total)
        vacuum_analyze()
        for label, url in pages():
            results[(label, total)] = measure(client, url, repeats)
    truncate()

    rows = []
    small, large = sizes
    for label, _ in pages():
        for total in sizes:
            median, p95, queries = results[(label, total)]
            rows.append((f"{label} @ {total:,}", f"median {median:.1f} ms, p95 {p95:.1f} ms, {queries} queries"))
        ratio = results[(label, large)][1] / results[(label, small)][1]
        rows.append((f"{label} p95 {large:,} / {small:,}", f"{ratio:.2f} (target < 1.5)"))
    if LONG:
        rows += poll_while_a_batch_runs(user, 1_000_000)
        truncate()
    print_table(f"Dashboard server time, 10 versions, {repeats} requests per page, Django test client", rows)


if __name__ == "__main__":
    main()
