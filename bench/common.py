"""Shared set-up for the benchmarks: a PostgreSQL database of their own, Redis, Django, printing.

Every script compares our path with a baseline measured in the same run and prints the ratio.
BENCH_QUICK=1 (or --quick) shrinks the sizes so CI can check the scripts work in seconds.
"""

from __future__ import annotations

import hashlib
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
    """Create the benchmark database afresh and migrate it.

    The first run of a set of migrations keeps the migrated, empty database as a template (named by
    a hash of the migration files); later runs copy it (0.15 s, where migrating takes about 5 s) and
    still run migrate, which then only re-runs the post-migrate sync. A changed migration makes a
    new template and drops the old ones.
    """
    import dj_database_url

    config = dj_database_url.parse(os.environ["DATABASE_URL"])
    name = config["NAME"]
    template = f"{name}_tpl_{_migrations_digest()}"
    with _admin_connection(config) as admin:
        # A scratch database made afresh each run: no schema or rows left over from an older run.
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        stale = admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s AND datname <> %s", [f"{name}_tpl_%", template]
        ).fetchall()
        for (old,) in stale:
            admin.execute(f'DROP DATABASE IF EXISTS "{old}" WITH (FORCE)')
        have_template = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [template]).fetchone()
        admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if have_template else ""))

    import django
    from django.core.management import call_command
    from django.db import connection

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    truncate()
    if not have_template:
        connection.close()  # a template is copied from a database nobody is connected to
        with _admin_connection(config) as admin:
            admin.execute(f'CREATE DATABASE "{template}" TEMPLATE "{name}"')


def _admin_connection(config: dict):
    """A connection to the server's maintenance database, to create and drop the benchmark's."""
    import psycopg

    return psycopg.connect(
        host=config["HOST"] or "127.0.0.1",
        port=config["PORT"] or 5432,
        user=config["USER"] or "postgres",
        password=config["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    )


def _migrations_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(ROOT.glob("workflows_admin/*/migrations/*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


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
