from django.db import migrations, models


def drop_counting_triggers(apps, schema_editor):
    """The counters gain the step: drop the triggers (their functions name the old conflict target),
    so the post_migrate hook recounts every row under a lock and installs them afresh."""
    if schema_editor.connection.vendor != "postgresql":
        return
    for trigger in ("inserted", "updated", "deleted", "truncated"):
        schema_editor.execute(f"DROP TRIGGER IF EXISTS workflows_count_{trigger} ON workflows_workflowinstance")


class Migration(migrations.Migration):
    dependencies = [
        ("workflows", "0003_lean_batch_items_and_live_selection"),
    ]

    operations = [
        migrations.RunPython(drop_counting_triggers, migrations.RunPython.noop),
        migrations.RemoveConstraint(
            model_name="instancecount",
            name="unique_instance_count_shard",
        ),
        migrations.AddField(
            model_name="instancecount",
            name="current_step",
            field=models.CharField(default="", max_length=200),
        ),
        migrations.AddConstraint(
            model_name="instancecount",
            constraint=models.UniqueConstraint(
                fields=("version", "status", "current_step", "shard"), name="unique_instance_count_step_shard"
            ),
        ),
    ]
