"""The missing-code guard with real workers: a deploy without a version's code parks its instances, and the
next deploy that has the code (a worker starting: Celery's worker_ready) resumes them to completion."""

import pytest
from django.conf import settings

from workflows_admin.workflows import selectors
from workflows_admin.workflows.models import AuditEvent, InstanceStatus, WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.services.instances import start_workflow
from workflows_admin.workflows.services.registry_sync import sync_registry

from .worker import WorkerProcess, purge_broker, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def status_of(instance) -> str:
    return WorkflowInstance.objects.get(pk=instance.pk).status


def test_a_worker_without_the_code_parks_and_a_worker_with_it_resumes_on_start():
    if not settings.CELERY_BROKER_URL.startswith(("redis://", "amqp://")):
        pytest.skip("worker tests need CELERY_BROKER_URL=redis://... (or amqp://)")
    purge_broker()
    sync_registry()
    # A deploy that dropped the toy workflow too early: its worker only knows the demo workflow.
    without_toy = WorkerProcess(extra_env={"WORKFLOWS_MODULES": "workflows_admin.demo.research_agent"}).start()
    try:
        instance = start_workflow("toy", {"n": 0}, version="1.0.0")
        wait_until(lambda: status_of(instance) == InstanceStatus.PARKED, timeout=60, message="the instance parked")
    finally:
        without_toy.stop()
    version = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    assert version.code_missing_since is not None and not version.has_code  # that worker's sync flagged it too
    assert selectors.code_guard_flags()[version.pk]["parked"] == 1

    with_toy = WorkerProcess().start()  # the fixed deploy
    try:
        wait_until(lambda: status_of(instance) == InstanceStatus.COMPLETED, timeout=60, message="the instance resumed")
    finally:
        with_toy.stop()
        purge_broker()
    instance.refresh_from_db()
    assert instance.context["trace"] == ["v1.first", "v1.second"]
    assert list(instance.step_runs.order_by("id").values_list("outcome", flat=True)) == [
        "parked",
        "succeeded",
        "succeeded",
    ]
    version.refresh_from_db()
    assert version.has_code and version.code_missing_since is None and selectors.code_guard_flags() == {}
    assert AuditEvent.objects.get(action="instance.resumed").actor_label == "system:worker"
