"""Shared set-up for the benchmarks: a PostgreSQL database of their own, Redis, Django, printing.

Every script compares our path with a baseline measured in the same run and prints the ratio.
BENCH_QUICK=1 (or --quick) shrinks the sizes so CI can check the scripts work in seconds.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/workflows_bench")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/9")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "workflows_admin.settings")
os.environ["WORKFLOWS_MODULES"] = "workflows_admin.demo.research_agent,bench.bench_workflows"
os.environ["WORKFLOWS_APPROVAL_THRESHOLD"] = "0"  # the batches are measured, not approved (four eyes off)
os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "testserver,127.0.0.1,localhost")  # the test client's host
QUICK = os.environ.get("BENCH_QUICK") == "1" or "--quick" in sys.argv


def size(full: int, quick: int) -> int:
    return quick if QUICK else full


def setup_django() -> None:
    """Create the benchmark database afresh and migrate it."""
    import dj_database_url
    import psycopg

    config = dj_database_url.parse(os.environ["DATABASE_URL"])
    admin = psycopg.connect(
        host=config["HOST"] or "127.0.0.1",
        port=config["PORT"] or 5432,
        user=config["USER"] or "postgres",
        password=config["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    )
    with admin:
        # A scratch database made afresh each run: no schema left over from an older checkout.
        admin.execute(f'DROP DATABASE IF EXISTS "{config["NAME"]}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{config["NAME"]}"')

    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    truncate()


def truncate() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE workflows_batchitem, workflows_migrationbatch, workflows_steprun, workflows_auditevent, "
            "workflows_inflightsample, workflows_workflowinstance RESTART IDENTITY CASCADE"
        )


def vacuum_analyze() -> None:
    """Fresh statistics and visibility map, as autovacuum would give a long-running database."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")


def purge_broker() -> None:
    from workflows_admin.celery import app

    with app.connection_for_write() as conn:
        for queue in ("celery", "batches"):
            conn.default_channel.queue_purge(queue)


def wait_for(predicate, timeout: float) -> None:
    """Poll `predicate` until it holds; a benchmark that never finishes fails instead of hanging."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not finish in time")
        time.sleep(0.05)


@contextmanager
def timed():
    """with timed() as t: ...; t() is the elapsed seconds."""
    start = time.perf_counter()
    end = None

    def elapsed() -> float:
        return (end or time.perf_counter()) - start

    try:
        yield elapsed
    finally:
        end = time.perf_counter()


def machine() -> str:
    import platform

    cores = os.cpu_count()
    return f"{platform.machine()} {cores} cores, Python {platform.python_version()}, PostgreSQL + Redis on localhost"


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}{' (quick mode)' if QUICK else ''}\n{machine()}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
