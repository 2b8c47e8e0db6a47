"""A GIN index on the instance context (jsonb_path_ops: containment, @>) for selection by query.

Partial, over the statuses a batch can select (in flight and failed): finished instances, most of
the table on a long-lived deployment, are never indexed, and finishing one adds no entry. Every
selection names its statuses (a subset of these), so the planner can prove the predicate.

Built CONCURRENTLY, outside a transaction, so a deploy on a large table never blocks the steps and
batches writing instances meanwhile. A build that was interrupted leaves an invalid index behind:
it is dropped and built again. The SQLite demo has no GIN indexes (nor JSONB containment)."""

from django.db import migrations

INDEX = "instance_context_path_ops"


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [INDEX])
        invalid = cursor.fetchone()
        if invalid and invalid[0]:
            cursor.execute(f"DROP INDEX CONCURRENTLY {INDEX}")
        cursor.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON workflows_workflowinstance "
            "USING gin (context jsonb_path_ops) "
            "WHERE status IN ('pending', 'running', 'waiting', 'parked', 'failed')"
        )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("workflows", "0007_version_patches"),
    ]

    operations = [migrations.RunPython(create, drop)]
