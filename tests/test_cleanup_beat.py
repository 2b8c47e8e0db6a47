"""The cleanup schedule, as stored by django-celery-beat, fires under a real `celery beat` and a real worker."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from workflows_admin.workflows.models import AuditEvent, InstanceStatus, Workflow, WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.services.registry_sync import sync_registry
from workflows_admin.workflows.services.schedules import PERIODIC_TASKS, ensure_periodic_tasks

from .faults import BeatProcess
from .worker import wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
CLEANUP = "Clean up stale instances"


def test_the_cleanup_schedule_is_stored_for_the_admin_and_fires_under_celery_beat(worker_process):
    sync_registry()
    ensure_periodic_tasks()
    stored = PeriodicTask.objects.get(name=CLEANUP)
    assert stored.task == PERIODIC_TASKS[CLEANUP][0] == "workflows_admin.workflows.tasks.clean_up_stale_instances"
    # An operator shortens the interval in the admin; the other schedules are switched off to keep beat quiet.
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.filter(pk=stored.pk).update(interval=every_second)
    PeriodicTask.objects.exclude(pk=stored.pk).update(enabled=False)

    Workflow.objects.filter(name="toy").update(max_lifetime=timedelta(hours=1), stale_policy="expire")
    version = WorkflowVersion.objects.get(workflow__name="toy", version="2.0.0")
    long_ago = timezone.now() - timedelta(hours=2)
    stale, fresh = WorkflowInstance.objects.bulk_create(
        WorkflowInstance(
            workflow_id=version.workflow_id,
            version=version,
            status=InstanceStatus.WAITING,  # waiting on a signal that never came: no step task involved
            current_step="second",
            context={"n": 0, "label": "x"},
            created_at=created_at,
            updated_at=created_at,
        )
        for created_at in (long_ago, timezone.now())
    )

    beat = BeatProcess({"CELERY_BROKER_URL": settings.CELERY_BROKER_URL}).start()
    try:
        wait_until(
            lambda: WorkflowInstance.objects.get(pk=stale.pk).status == InstanceStatus.EXPIRED,
            timeout=90,
            message="celery beat to send the cleanup task and the worker to expire the stale instance",
        )
    finally:
        beat.stop()
    assert WorkflowInstance.objects.get(pk=fresh.pk).status == InstanceStatus.WAITING
    event = AuditEvent.objects.get(action="instance.expired", instance_id=stale.pk)
    assert event.actor_label == "system:cleanup"
    assert PeriodicTask.objects.get(pk=stored.pk).total_run_count >= 1
