"""Contexts and their snapshots compressed with lz4 instead of pglz, where PostgreSQL has it (14+,
built with lz4). Agent contexts are kilobytes of partly compressible text, TOASTed on every write:
pglz's compression was the largest single cost of migrating them (see the commit's figures). Values
already stored keep their pglz compression until rewritten; nothing is rewritten here, so the change
is a catalog update, quick on any table. SQLite (the embedded default) has no TOAST: nothing to do."""

from django.db import migrations

COLUMNS = (("workflows_workflowinstance", "context"), ("workflows_batchitem", "from_context"))


def _lz4_available(cursor) -> bool:
    cursor.execute("SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'")
    row = cursor.fetchone()
    return bool(row and row[0])


def set_compression(method: str):
    def apply(apps, schema_editor):
        connection = schema_editor.connection
        if connection.vendor != "postgresql" or connection.pg_version < 140000:
            return
        with connection.cursor() as cursor:
            if method == "lz4" and not _lz4_available(cursor):
                return
            for table, column in COLUMNS:
                cursor.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" SET COMPRESSION {method}')

    return apply


class Migration(migrations.Migration):
    dependencies = [("workflows", "0011_batch_chain_leases")]

    operations = [migrations.RunPython(set_compression("lz4"), set_compression("default"))]
