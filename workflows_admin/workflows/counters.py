"""Exact instance counts per (version, status, current step) that cost the same at a thousand or a
million instances.

On PostgreSQL, statement-level triggers with transition tables keep `workflows_instancecount` in step
with every INSERT, UPDATE, DELETE and TRUNCATE of instances, in the same transaction, so a count is
never ahead of or behind the rows. Each (version, status, step) is spread over SHARDS rows (by instance id)
so concurrent step workers rarely wait on the same counter row; rows are upserted in key order so
concurrent statements lock them in the same order. Other databases (the SQLite demo) count rows.
"""

from __future__ import annotations

SHARDS = 16

_UPSERT_DELTAS = f"""
    INSERT INTO workflows_instancecount (version_id, status, current_step, shard, n)
    SELECT version_id, status, current_step, shard, sum(delta) FROM (
        SELECT version_id, status, current_step, (id % {SHARDS})::smallint AS shard, 1 AS delta
        FROM {{new}} AS new_side
        UNION ALL
        SELECT version_id, status, current_step, (id % {SHARDS})::smallint AS shard, -1 AS delta
        FROM {{old}} AS old_side
    ) AS changes
    GROUP BY version_id, status, current_step, shard
    HAVING sum(delta) <> 0
    ORDER BY version_id, status, current_step, shard
    ON CONFLICT (version_id, status, current_step, shard) DO UPDATE SET n = workflows_instancecount.n + EXCLUDED.n;
"""
_EMPTY = (
    "(SELECT NULL::bigint AS id, NULL::bigint AS version_id, NULL::varchar AS status, "
    "NULL::varchar AS current_step WHERE false)"
)

FUNCTIONS_SQL = f"""
CREATE OR REPLACE FUNCTION workflows_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN {_UPSERT_DELTAS.format(new="new_rows", old=_EMPTY)} RETURN NULL; END $$;

CREATE OR REPLACE FUNCTION workflows_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN {_UPSERT_DELTAS.format(new="new_rows", old="old_rows")} RETURN NULL; END $$;

CREATE OR REPLACE FUNCTION workflows_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN {_UPSERT_DELTAS.format(new=_EMPTY, old="old_rows")} RETURN NULL; END $$;

CREATE OR REPLACE FUNCTION workflows_count_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN DELETE FROM workflows_instancecount; RETURN NULL; END $$;
"""

TRIGGER_NAMES = (
    "workflows_count_inserted",
    "workflows_count_updated",
    "workflows_count_deleted",
    "workflows_count_truncated",
)

# Recount under a lock that blocks writers (not readers), then attach the triggers: no change is missed.
BACKFILL_AND_TRIGGERS_SQL = f"""
LOCK TABLE workflows_workflowinstance IN SHARE ROW EXCLUSIVE MODE;
DELETE FROM workflows_instancecount;
INSERT INTO workflows_instancecount (version_id, status, current_step, shard, n)
    SELECT version_id, status, current_step, (id % {SHARDS})::smallint, count(*) FROM workflows_workflowinstance
    GROUP BY 1, 2, 3, 4;
DROP TRIGGER IF EXISTS workflows_count_inserted ON workflows_workflowinstance;
DROP TRIGGER IF EXISTS workflows_count_updated ON workflows_workflowinstance;
DROP TRIGGER IF EXISTS workflows_count_deleted ON workflows_workflowinstance;
DROP TRIGGER IF EXISTS workflows_count_truncated ON workflows_workflowinstance;
CREATE TRIGGER workflows_count_inserted AFTER INSERT ON workflows_workflowinstance
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION workflows_count_inserted();
CREATE TRIGGER workflows_count_updated AFTER UPDATE ON workflows_workflowinstance
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION workflows_count_updated();
CREATE TRIGGER workflows_count_deleted AFTER DELETE ON workflows_workflowinstance
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION workflows_count_deleted();
CREATE TRIGGER workflows_count_truncated AFTER TRUNCATE ON workflows_workflowinstance
    FOR EACH STATEMENT EXECUTE FUNCTION workflows_count_truncated();
"""


def maintained(connection) -> bool:
    """Whether this database keeps the counter table (PostgreSQL, where the triggers live)."""
    return connection.vendor == "postgresql"


def ensure_installed(connection) -> bool:
    """Install or refresh the counting triggers; recount only when a trigger was missing.

    Run after every `migrate` (post_migrate), so the functions always match this code and a
    database restored without its triggers heals itself. Returns whether it recounted.
    """
    if not maintained(connection):
        return False
    with connection.cursor() as cursor:
        cursor.execute(FUNCTIONS_SQL)
        cursor.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'workflows_workflowinstance'::regclass "
            "AND tgname = ANY(%s)",
            [list(TRIGGER_NAMES)],
        )
        if cursor.fetchone()[0] == len(TRIGGER_NAMES):
            return False
    from django.db import transaction

    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute(BACKFILL_AND_TRIGGERS_SQL)
    return True
