"""The authors' helper check_migration, on given contexts and on live ones."""

import json
from datetime import UTC, datetime

import psycopg
import pytest
from django.db import connection
from psycopg import sql

from workflows_admin.testing import check_migration, read_only_cursor
from workflows_admin.workflows.models import Workflow, WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.services.instances import start_workflows

from .worker import database_url


def test_given_contexts_return_their_diffs():
    check = check_migration("research-agent", "1.0.0", "2.1.0", [{"topic": "t", "raw_text": "x"}], step="analyze")
    assert check.path == ["1.0.0", "2.0.0", "2.1.0"]
    assert check.diffs[0]["removed"] == {"raw_text": "x"}
    assert set(check.diffs[0]["added"]) == {"enriched_text", "sources", "model_config"}
    assert check.results[0]["step"] == "analyze"


def test_failures_are_listed_in_one_assertion():
    with pytest.raises(AssertionError, match=r"fails for 2 of 3 context\(s\)") as error:
        check_migration("research-agent", "1.0.0", "2.0.0", [{"topic": "t", "raw_text": "x"}, {"topic": "t"}, {}])
    assert str(error.value).count("rename raw_text -> enriched_text: no field 'raw_text'") == 2


@pytest.mark.django_db
def test_live_contexts_from_the_database(synced):
    start_workflows("toy", [{"n": i, "poison": i == 0} for i in range(5)], version="1.0.0")
    with pytest.raises(AssertionError, match="poisoned context"):
        check_migration("toy", "1.0.0", "2.0.0", from_database=10)
    assert check_migration("toy", "1.0.0", "2.0.0", from_database=3).checked == 3  # the 3 newest are fine


def _server_url(name: str) -> str:
    return database_url().rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def staging(db):
    """A second real PostgreSQL database, made for the test (the instance tables, from the models) and dropped
    after it: what a staging copy looks like to check_migration."""
    name = "wa_data_fixes_staging"
    with connection.schema_editor(collect_sql=True, atomic=False) as editor:
        for model in (Workflow, WorkflowVersion, WorkflowInstance):
            editor.create_model(model)
    with psycopg.connect(_server_url("postgres"), autocommit=True) as server:
        server.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _server_url(name)
    now = datetime.now(UTC)
    with psycopg.connect(url, autocommit=True) as db:
        for statement in editor.collected_sql:
            db.execute(statement)
        db.execute(
            "INSERT INTO workflows_workflow (id, name, description, ramp_percent, stale_policy, created_at) "
            "VALUES (1, 'toy', '', 0, 'report', %s)",
            [now],
        )
        for pk, label in ((1, "1.0.0"), (2, "2.0.0")):
            db.execute(
                "INSERT INTO workflows_workflowversion (id, workflow_id, version, major, minor, patch, prerelease, "
                "state, description, steps, contract, patches, has_code, code_missing_reason, stale_policy, "
                "registered_at) VALUES (%s, 1, %s, %s, 0, 0, '', 'active', '', '[]', '{}', '[]', true, '', '', %s)",
                [pk, label, pk, now],
            )
        rows = [  # (id, version, status, step, context)
            (10, 1, "waiting", "second", {"n": 7, "poison": True}),
            (11, 1, "pending", "first", {"n": 8}),
            (12, 1, "completed", "", {"n": 9, "poison": True}),  # finished: never sampled
            (13, 2, "pending", "first", {"n": 1, "label": "n=1"}),  # on another version
        ]
        for pk, version, status, step, context in rows:
            db.execute(
                "INSERT INTO workflows_workflowinstance (id, workflow_id, version_id, status, current_step, context, "
                "revision, attempt, start_key, status_reason, patches, created_at, updated_at) "
                "VALUES (%s, 1, %s, %s, %s, %s, 1, 0, '', '', '{}', %s, %s)",
                [pk, version, status, step, json.dumps(context), now, now],
            )
    yield url
    with psycopg.connect(_server_url("postgres"), autocommit=True) as server:
        server.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_live_contexts_from_a_named_database(synced, staging, monkeypatch):
    assert not WorkflowInstance.objects.exists()  # Django's own (test) database has none
    with pytest.raises(AssertionError, match="no context to check"):
        check_migration("toy", "1.0.0", "2.0.0", from_database=10)
    with pytest.raises(AssertionError, match=r"fails for 1 of 2 context\(s\):\n#10: .*poisoned context"):
        check_migration("toy", "1.0.0", "2.0.0", from_database=10, database_url=staging)
    check = check_migration("toy", "1.0.0", "2.0.0", from_database=1, database_url=staging)  # the newest: #11
    assert [(r["sample"], r["context"]) for r in check.results] == [("#11", {"n": 8, "label": "n=8"})]
    monkeypatch.setenv("WORKFLOWS_CHECK_DATABASE_URL", staging)
    with pytest.raises(AssertionError, match="#10: "):
        check_migration("toy", "1.0.0", "2.0.0", from_database=10)
    check = check_migration("toy", "2.0.0", "1.0.0", from_database=10)
    assert [r["sample"] for r in check.results] == ["#13"] and check.results[0]["step"] == "first"
    with psycopg.connect(staging, autocommit=True) as db:
        db.execute("UPDATE workflows_workflowinstance SET status = 'failed'")
    with pytest.raises(AssertionError, match=r"none in flight on 1.0.0 in postgres://.*/wa_data_fixes_staging\)"):
        check_migration("toy", "1.0.0", "2.0.0", from_database=10)


def test_the_named_database_is_only_read(staging):
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), read_only_cursor(staging) as cursor:
        cursor.execute("UPDATE workflows_workflowinstance SET status = 'failed'")
    with psycopg.connect(staging) as db:
        assert db.execute("SELECT count(*) FROM workflows_workflowinstance WHERE status = 'failed'").fetchone() == (0,)
