"""A batch item's snapshot (from_context) kept in the item's own row while the row stays under
8 KB, not in the TOAST table. A snapshot is written once, beside its item's other columns, and
read back whole by a rollback: moved out of line, each one also cost a TOAST row and its index
entry. A chunk copies each snapshot from its instance's row already compressed, and agent contexts
(4 KB median) compress to well under 8 KB; larger ones still go out of line. (A snapshot written
from a value, a boundary's post-step state, is compressed only once its row passes 8 KB.)
Contexts themselves stay out of line: an instance row is rewritten at every step, and a TOAST
pointer is cheaper to carry. SQLite (the embedded default) has no TOAST: nothing to do."""

from django.db import migrations


def set_target(reloption: str):
    def apply(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(f'ALTER TABLE "workflows_batchitem" {reloption}')

    return apply


class Migration(migrations.Migration):
    dependencies = [("workflows", "0012_lz4_context_compression")]

    operations = [
        migrations.RunPython(
            set_target("SET (toast_tuple_target = 8160)"), set_target("RESET (toast_tuple_target)")
        )
    ]
