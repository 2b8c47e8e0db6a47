"""A pytest helper for workflow authors: prove a migration on real shapes of data before shipping it.

from workflows_admin.testing import check_migration

def test_upgrade_to_2_1():
    check = check_migration("research-agent", "1.0.0", "2.1.0", [{"topic": "t", "raw_text": "x"}])
    assert check.diffs[0]["added"]["sources"] == []

@pytest.mark.django_db
def test_upgrade_on_live_shapes():
    check_migration("research-agent", "1.0.0", "2.1.0", from_database=500)  # a sample of live contexts

def test_upgrade_on_staging_shapes():  # under pytest Django's database is the empty test one: name another
    check_migration("research-agent", "1.0.0", "2.1.0", from_database=500, database_url="postgres://.../staging")
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from workflows_admin.engine import MigrationFailed, WorkflowDef, plan_migration
from workflows_admin.engine.planning import diff_contexts


@dataclass
class MigrationCheck:
    path: list[str]
    checked: int = 0
    diffs: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)


def check_migration(
    workflow: str | WorkflowDef,
    source: str,
    target: str,
    contexts: list[dict[str, Any]] | None = None,
    *,
    step: str | None = None,
    from_database: int | None = None,
    database_url: str | None = None,
) -> MigrationCheck:
    """Run the migration path on each context and validate against the target contract.

    Contexts come from the argument, or (`from_database=N`) from the N newest in-flight instances of
    the source version: in Django's database, or in the PostgreSQL database at `database_url` (default:
    the WORKFLOWS_CHECK_DATABASE_URL environment variable), read through a read-only connection of its
    own, so a test can check a staging copy while Django uses its test database. Raises AssertionError
    listing every failure; returns the diffs otherwise.
    """
    if isinstance(workflow, str):
        from workflows_admin.workflows.runtime import get_registry

        workflow = get_registry().get(workflow)
    plan = plan_migration(workflow, source, target)
    samples: list[tuple[Any, dict[str, Any], str | None]] = [
        (position, context, step) for position, context in enumerate(contexts or [])
    ]
    database_url = database_url or os.environ.get("WORKFLOWS_CHECK_DATABASE_URL") or None
    if from_database:
        if isinstance(from_database, bool) or not isinstance(from_database, int) or from_database < 0:
            raise ValueError(f"from_database must be a number of instances, got {from_database!r}")
        if database_url:
            rows = _live_contexts_at(database_url, workflow.name, str(plan.source), from_database)
        else:
            rows = _live_contexts(workflow.name, str(plan.source), from_database)
        samples += [(f"#{pk}", context, current or None) for pk, context, current in rows]
    if not samples:
        where = f" (none in flight on {plan.source} in {_without_password(database_url)})" if database_url else ""
        raise AssertionError(f"no context to check: pass contexts or from_database=N with live instances{where}")
    check = MigrationCheck(path=plan.path)
    failures = []
    for label, context, at_step in samples:
        try:
            migrated, new_step = plan.apply(context, at_step)
        except MigrationFailed as failure:
            failures.append(f"{label}: {failure.message}")
            continue
        diff = diff_contexts(context, migrated)
        check.diffs.append(diff)
        check.results.append({"sample": label, "context": migrated, "step": new_step})
    check.checked = len(samples)
    if failures:
        raise AssertionError(
            f"migration {' -> '.join(plan.path)} fails for {len(failures)} of {len(samples)} context(s):\n"
            + "\n".join(failures)
        )
    return check


def _live_contexts(workflow: str, version: str, limit: int) -> list[tuple[Any, Any, str]]:
    from workflows_admin.workflows.models import IN_FLIGHT_STATUSES, WorkflowInstance

    rows = WorkflowInstance.objects.filter(
        workflow__name=workflow, version__version=version, status__in=IN_FLIGHT_STATUSES
    ).order_by("-pk")
    return list(rows.values_list("pk", "context", "current_step")[:limit])


def _live_contexts_at(url: str, workflow: str, version: str, limit: int) -> list[tuple[Any, Any, str]]:
    """The same rows from another PostgreSQL database, in a READ ONLY transaction: a check never writes there."""
    from psycopg import sql

    from workflows_admin.workflows.models import IN_FLIGHT_STATUSES, Workflow, WorkflowInstance, WorkflowVersion

    query = sql.SQL(
        "SELECT i.id, i.context, i.current_step FROM {instances} i "
        "JOIN {versions} v ON v.id = i.version_id JOIN {workflows} w ON w.id = v.workflow_id "
        "WHERE w.name = %s AND v.version = %s AND i.status = ANY(%s) ORDER BY i.id DESC LIMIT %s"
    ).format(
        instances=sql.Identifier(WorkflowInstance._meta.db_table),
        versions=sql.Identifier(WorkflowVersion._meta.db_table),
        workflows=sql.Identifier(Workflow._meta.db_table),
    )
    with read_only_cursor(url) as cursor:
        cursor.execute(query, [workflow, version, [str(s) for s in IN_FLIGHT_STATUSES], limit])
        return cursor.fetchall()


@contextmanager
def read_only_cursor(url: str):
    """A cursor on a connection of its own to the PostgreSQL database at `url`, in a READ ONLY transaction."""
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as connection:
        connection.read_only = True  # the transaction below starts with BEGIN READ ONLY
        with connection.transaction(), connection.cursor() as cursor:
            yield cursor


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
