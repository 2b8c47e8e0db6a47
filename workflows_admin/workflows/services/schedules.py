"""The periodic tasks, stored with django-celery-beat so operators can change them in the admin."""

from __future__ import annotations

from django_celery_beat.models import IntervalSchedule, PeriodicTask

# name -> (task, every N seconds). Created once; later edits in the admin are kept.
PERIODIC_TASKS = {
    "Recover stalled steps": ("workflows_admin.workflows.tasks.recover_stalled_steps", 30),
    "Sample in-flight counts": ("workflows_admin.workflows.tasks.sample_in_flight_counts", 60),
    "Clean up stale instances": ("workflows_admin.workflows.tasks.clean_up_stale_instances", 900),
    "Resume parked instances": ("workflows_admin.workflows.tasks.resume_parked_instances", 60),
    "Resume stalled migration batches": ("workflows_admin.workflows.tasks.resume_stalled_batches", 2),
    "Advance rollouts": ("workflows_admin.workflows.tasks.tick_rollouts", 30),
    "Discard unconfirmed previews": ("workflows_admin.workflows.tasks.discard_stale_drafts", 3600),
    "Move waiting instances of auto-upgrade versions": ("workflows_admin.workflows.tasks.sweep_auto_upgrades", 60),
    "Re-send undelivered webhooks": ("workflows_admin.webhooks.tasks.resend_undelivered_webhooks", 60),
    "Discard old idempotency keys": ("workflows_admin.api.tasks.discard_old_idempotency_keys", 3600),
}


def ensure_periodic_tasks() -> None:
    for name, (task, seconds) in PERIODIC_TASKS.items():
        if PeriodicTask.objects.filter(name=name).exists():
            continue
        interval, _ = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.create(name=name, task=task, interval=interval)
