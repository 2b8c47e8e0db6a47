"""Auto-upgrade under a real worker: 1,000 instances stepping on an auto-upgrade version while the
current version changes. Every instance moves at most once and only at a step boundary, no step
runs twice, and the counters equal COUNT(*)."""

from __future__ import annotations

from collections import Counter

import pytest
from django.db import connection

from workflows_admin.workflows.models import BatchItem, MigrationBatch, StepRun, WorkflowInstance, WorkflowVersion
from workflows_admin.workflows.selectors import status_counts_by_version
from workflows_admin.workflows.services import lifecycle, upgrades
from workflows_admin.workflows.services.instances import start_workflows

from .worker import WorkerProcess, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
INSTANCES = 1000


def test_a_thousand_stepping_instances_upgrade_once_each_while_the_current_version_changes(synced):
    v1 = WorkflowVersion.objects.get(workflow__name="toy", version="1.0.0")
    v2 = WorkflowVersion.objects.get(workflow__name="toy", version="2.0.0")
    lifecycle.make_current(v1)
    upgrades.set_upgrade_policy(v1, "auto")
    ids = [row.pk for row in start_workflows("toy", [{"n": i} for i in range(INSTANCES)], version="1.0.0")]
    worker = WorkerProcess(concurrency=2, extra_env={"TOY_STEP_SECONDS": "0.01"}).start()
    try:
        wait_until(lambda: StepRun.objects.count() >= 100, 60, message="steps under way")
        lifecycle.make_current(v2)  # from now on, each boundary of a 1.0.0 instance moves it to 2.0.0
        wait_until(
            lambda: not WorkflowInstance.objects.filter(pk__in=ids).exclude(status="completed").exists(),
            240,
            message="every instance completed",
        )
    finally:
        worker.stop()
    auto = MigrationBatch.objects.get(auto_upgrade=True)
    moved = BatchItem.objects.filter(batch=auto)
    assert moved.count() == auto.total == auto.succeeded > 0  # they really upgraded mid-flight
    per_instance = Counter(moved.values_list("instance_id", flat=True))
    assert max(per_instance.values()) == 1  # at most once each
    # Every instance's trace is a run of 1.0.0 steps then 2.0.0 steps, each step once.
    for pk, context, version in WorkflowInstance.objects.filter(pk__in=ids).values_list(
        "pk", "context", "version__version"
    ):
        trace = context["trace"]
        assert len(trace) == len(set(trace)), (pk, trace)
        if pk in per_instance:
            assert version == "2.0.0" and trace[-1] == "v2.second" and trace[0] == "v1.first", (pk, trace)
        else:
            assert trace == ["v1.first", "v1.second"], (pk, trace)  # finished on 1.0.0 before the switch
    assert not StepRun.objects.filter(outcome="discarded").exists()  # no step's work was thrown away
    claims = StepRun.objects.filter(outcome="succeeded").values_list("instance_id", "claim_revision")
    assert len(claims) == len(set(claims))
    exact: dict = {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT version_id, status, count(*) FROM workflows_workflowinstance GROUP BY 1, 2")
        for version_id, status, n in cursor.fetchall():
            exact.setdefault(version_id, {})[status] = n
    assert status_counts_by_version() == exact
