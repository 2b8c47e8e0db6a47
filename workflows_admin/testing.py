"""A pytest helper for workflow authors: prove a migration on real shapes of data before shipping it.

from workflows_admin.testing import check_migration

def test_upgrade_to_2_1():
    check = check_migration("research-agent", "1.0.0", "2.1.0", [{"topic": "t", "raw_text": "x"}])
    assert check.diffs[0]["added"]["sources"] == []

@pytest.mark.django_db
def test_upgrade_on_live_shapes():  # a stratified sample of live contexts, as `workflows verify` takes
    check_migration("research-agent", "1.0.0", "2.1.0", from_database=500)

def test_upgrade_on_staging_shapes():  # under pytest Django's database is the empty test one: name another
    check_migration("research-agent", "1.0.0", "2.1.0", from_database=500, database_url="postgres://.../staging")
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from workflows_admin.engine import MigrationPlan, PlanningError, WorkflowDef, plan_migration
from workflows_admin.engine.planning import diff_contexts
from workflows_admin.engine.verification import Sample, check_sample

DEFAULT_PER_STRATUM = 5  # as `workflows verify`


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
    per_stratum: int | None = None,
) -> MigrationCheck:
    """Run the migration path on each context, validate against the target contract and, where a path
    back exists, check that the round trip restores the context exactly: the check `workflows verify`
    and a rollout's gate run, with the same sampler.

    Contexts come from the argument, or (`from_database=N`) from a stratified sample of at most N of
    the source version's in-flight instances (every step x status x age bucket, `per_stratum` each,
    5 by default): in Django's database, or in the PostgreSQL database at `database_url` (default: the
    WORKFLOWS_CHECK_DATABASE_URL environment variable), read through a read-only connection of its
    own, so a test can check a staging copy while Django uses its test database. Raises
    AssertionError listing every failure; returns the diffs otherwise.
    """
    if isinstance(workflow, str):
        from workflows_admin.workflows.runtime import get_registry

        workflow = get_registry().get(workflow)
    plan = plan_migration(workflow, source, target)
    try:
        back: MigrationPlan | None = plan_migration(workflow, target, source)
    except PlanningError:
        back = None
    samples: list[tuple[Any, dict[str, Any], str | None]] = [
        (position, context, step) for position, context in enumerate(contexts or [])
    ]
    database_url = database_url or os.environ.get("WORKFLOWS_CHECK_DATABASE_URL") or None
    if from_database:
        if isinstance(from_database, bool) or not isinstance(from_database, int) or from_database < 0:
            raise ValueError(f"from_database must be a number of instances, got {from_database!r}")
        each = min(per_stratum or DEFAULT_PER_STRATUM, from_database)
        if database_url:
            live = _live_samples_at(database_url, workflow.name, str(plan.source), from_database, each)
        else:
            live = _live_samples(workflow.name, str(plan.source), from_database, each)
        samples += [(f"#{sample.instance_id}", sample.context, sample.step or None) for sample in live]
    if not samples:
        where = f" (none in flight on {plan.source} in {_without_password(database_url)})" if database_url else ""
        raise AssertionError(f"no context to check: pass contexts or from_database=N with live instances{where}")
    check = MigrationCheck(path=plan.path)
    failures = []
    for label, context, at_step in samples:
        outcome = check_sample(plan, back, context, at_step or "")
        if outcome.cause is not None:
            failures.append(f"{label}: {outcome.message}" + (f" {outcome.diff}" if outcome.diff else ""))
            continue
        assert outcome.result is not None
        check.diffs.append(diff_contexts(context, outcome.result))
        check.results.append({"sample": label, "context": outcome.result, "step": outcome.step})
    check.checked = len(samples)
    if failures:
        raise AssertionError(
            f"migration {' -> '.join(plan.path)} fails for {len(failures)} of {len(samples)} context(s):\n"
            + "\n".join(failures)
        )
    return check


def _live_samples(workflow: str, version: str, limit: int, each: int) -> list[Sample]:
    from django.db import connection

    from workflows_admin.workflows import counters
    from workflows_admin.workflows.services.verification import sample_instances

    with connection.cursor() as cursor:
        _strata, samples = sample_instances(
            cursor,
            workflow,
            [version],
            limit=limit,
            per_stratum=each,
            counted=counters.maintained(connection),
            now=datetime.now(UTC),
            adapt=connection.ops.adapt_datetimefield_value,
        )
    return samples


def _live_samples_at(url: str, workflow: str, version: str, limit: int, each: int) -> list[Sample]:
    """The same sample from another PostgreSQL database, in a READ ONLY transaction: a check never writes
    there. Its strata come from the counter table when the triggers keep it there, else from a GROUP BY."""
    from workflows_admin.workflows.counters import TRIGGER_NAMES
    from workflows_admin.workflows.services.verification import COUNTS, INSTANCES, sample_instances

    with read_only_cursor(url) as cursor:
        cursor.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND (SELECT count(*) FROM pg_trigger "
            "WHERE tgrelid = to_regclass(%s) AND tgname = ANY(%s)) = %s",
            [COUNTS, INSTANCES, list(TRIGGER_NAMES), len(TRIGGER_NAMES)],
        )
        counted = bool(cursor.fetchone()[0])
        _strata, samples = sample_instances(
            cursor, workflow, [version], limit=limit, per_stratum=each, counted=counted, now=datetime.now(UTC)
        )
    return samples


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
