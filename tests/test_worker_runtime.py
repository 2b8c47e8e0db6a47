"""A real Celery worker process (Redis broker) runs instances to completion."""

import pytest

from workflows_admin.workflows.models import InstanceStatus, StepRun, WorkflowInstance
from workflows_admin.workflows.services.instances import start_workflows
from workflows_admin.workflows.services.registry_sync import sync_registry

from .worker import wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_worker_runs_200_instances_to_completion(worker_process):
    sync_registry()
    contexts = [{"topic": f"t{i}", "raw_text": f"some words about topic number {i} here"} for i in range(100)]
    start_workflows("research-agent", contexts, version="1.0.0")
    contexts = [
        {"topic": f"t{i}", "enriched_text": f"text {i}", "sources": [], "model_config": {"style": "shout"}}
        for i in range(100)
    ]
    start_workflows("research-agent", contexts)  # routed to the current version, 2.1.0
    wait_until(
        lambda: WorkflowInstance.objects.filter(status=InstanceStatus.COMPLETED).count() == 200,
        timeout=180,
        message="200 completed instances",
    )
    assert WorkflowInstance.objects.exclude(status=InstanceStatus.COMPLETED).count() == 0
    # Each instance ran each of its version's steps exactly once.
    assert StepRun.objects.filter(version__version="1.0.0", outcome="succeeded").count() == 200
    assert StepRun.objects.filter(version__version="2.1.0", outcome="succeeded").count() == 300
    assert StepRun.objects.exclude(outcome="succeeded").count() == 0
    sample = WorkflowInstance.objects.filter(version__version="2.1.0").first()
    assert sample.context["summary"].startswith(sample.context["topic"].upper())
