import django.db.models.deletion
from django.db import migrations, models

RESUMER = "Resume stalled migration batches"


def resume_every_two_seconds(apps, schema_editor):
    """The resumer replaces chains whose 5 s lease ran out: at its old 30 s period a batch would still
    wait half a minute. Only a schedule left at the old default is changed (an operator's is kept)."""
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    task = PeriodicTask.objects.filter(name=RESUMER, interval__every=30, interval__period="seconds").first()
    if task is not None:
        task.interval, _ = IntervalSchedule.objects.get_or_create(every=2, period="seconds")
        task.save(update_fields=["interval"])


class Migration(migrations.Migration):
    dependencies = [
        ("workflows", "0010_batch_approval_and_queue"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.CreateModel(
            name="BatchChain",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("lease_expires_at", models.DateTimeField(db_index=True)),
                (
                    "batch",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="chains",
                        to="workflows.migrationbatch",
                    ),
                ),
            ],
        ),
        migrations.RunPython(resume_every_two_seconds, migrations.RunPython.noop),
    ]
