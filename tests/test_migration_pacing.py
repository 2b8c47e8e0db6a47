"""Pacing a migration: a scheduled start, a canary first chunk, a rate limit."""

from datetime import timedelta

import pytest
from django.utils import timezone

from workflows_admin.workflows.models import AuditEvent, BatchItem, MigrationBatch, WorkflowInstance
from workflows_admin.workflows.services import batches
from workflows_admin.workflows.services.errors import ServiceError
from workflows_admin.workflows.services.instances import start_workflows
from workflows_admin.workflows.services.registry_sync import sync_registry

from .helpers import waiting_instances
from .worker import wait_until


def run(batch, now=None):
    results = []
    while (result := batches.process_chunk(batch.pk, now=now)) == "more":
        results.append(result)
    batch.refresh_from_db()
    return result


@pytest.mark.django_db
def test_a_scheduled_batch_does_not_start_before_its_time(synced):
    start_workflows("toy", [{"n": i} for i in range(20)], version="1.0.0")
    window = timezone.now() + timedelta(hours=3)
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0", pacing={"not_before": window.isoformat()})
    assert run(batch, now=window - timedelta(minutes=1)) == "scheduled"
    assert batch.processed == 0 and WorkflowInstance.objects.filter(version__version="1.0.0").count() == 20
    assert run(batch, now=window + timedelta(seconds=1)) == "finished"
    assert (batch.state, batch.succeeded) == ("completed", 20)


@pytest.mark.django_db
def test_a_failing_canary_pauses_the_batch_with_the_rest_untouched(synced):
    start_workflows("toy", [{"n": i, "poison": i < 5} for i in range(100)], version="1.0.0")
    batch = batches.start_migration(
        "toy", source="1.0.0", target="2.0.0", pacing={"canary_size": 20, "canary_max_failure_rate": 0.1}
    )
    assert run(batch) == "canary paused"
    assert (batch.state, batch.processed, batch.failed) == ("paused", 20, 5)
    assert WorkflowInstance.objects.filter(version__version="1.0.0", revision=1).count() == 85  # 80 + 5 failed
    assert WorkflowInstance.objects.filter(version__version="2.0.0").count() == 15
    event = AuditEvent.objects.get(action="batch.canary_paused", batch=batch)
    assert event.details == {"canary": 20, "failed": 5, "failure_share": 0.25, "max_failure_share": 0.1}
    batches.resume_batch(batch.pk)  # the operator looked and decided to go on
    assert run(batch) == "finished" and batch.succeeded == 95


@pytest.mark.django_db
def test_a_healthy_canary_goes_on_and_no_threshold_means_review(synced):
    start_workflows("toy", [{"n": i} for i in range(50)], version="1.0.0")
    healthy = batches.start_migration(
        "toy",
        source="1.0.0",
        target="2.0.0",
        selection={"ids": list(WorkflowInstance.objects.values_list("pk", flat=True)[:25])},
        pacing={"canary_size": 10, "canary_max_failure_rate": 0.0},
    )
    assert run(healthy) == "finished" and healthy.succeeded == 25
    assert AuditEvent.objects.filter(action="batch.canary_passed", batch=healthy).exists()
    review = batches.start_migration("toy", source="1.0.0", target="2.0.0", pacing={"canary_size": 5})
    assert run(review) == "canary paused" and review.processed == 5


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("pacing", "message"),
    [
        ({"rate_limit": 0}, "rate_limit must be a whole number"),
        ({"canary_size": "x"}, "canary_size must be a whole number"),
        ({"canary_size": 5, "canary_max_failure_rate": 2}, "share from 0 to 1"),
        ({"canary_max_failure_rate": 0.1}, "needs canary_size"),
        ({"not_before": "tomorrow"}, "not_before must be an ISO date-time"),
        ({"speed": "fast"}, "unknown pacing option"),
    ],
)
def test_bad_pacing_is_refused_and_changes_nothing(synced, pacing, message):
    start_workflows("toy", [{"n": 1}], version="1.0.0")
    with pytest.raises(ServiceError, match=message):
        batches.start_migration("toy", source="1.0.0", target="2.0.0", pacing=pacing)
    assert not MigrationBatch.objects.exists()


@pytest.mark.django_db
def test_a_second_chain_of_a_rate_limited_batch_ends_instead_of_doubling_the_rate(synced):
    start_workflows("toy", [{"n": i} for i in range(30)], version="1.0.0")
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0", pacing={"rate_limit": 10})
    assert batches.process_chunk(batch.pk) == "more"  # 10 instances: the next chunk is due in a second
    # A redelivered or re-sent chunk task arriving meanwhile takes nothing and sends nothing.
    assert batches.process_chunk(batch.pk) == "early"
    batch.refresh_from_db()
    assert batch.processed == 10
    later = timezone.now() + timedelta(seconds=1)
    assert batches.process_chunk(batch.pk, now=later) == "more"
    batch.refresh_from_db()
    assert batch.processed == 20
    # Paused and resumed before its next chunk was due: the chain sent by the resume is not "early".
    batches.pause_batch(batch.pk)
    batches.resume_batch(batch.pk)
    assert batches.process_chunk(batch.pk) == "more"


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_rate_limited_batch_stays_under_its_limit(worker_process):
    sync_registry()
    waiting_instances(600)
    batch = batches.start_migration("toy", source="1.0.0", target="2.0.0", pacing={"rate_limit": 200})
    wait_until(lambda: MigrationBatch.objects.get(pk=batch.pk).is_finished, timeout=120, message="batch done")
    batch.refresh_from_db()
    elapsed = (batch.finished_at - batch.started_at).total_seconds()
    assert batch.succeeded == 600
    # 600 at 200/s: at least two full waits between its three one-second chunks (10% tolerance).
    assert batch.succeeded / elapsed <= 200 * 1.1, elapsed
    items = BatchItem.objects.filter(batch=batch).order_by("finished_at")
    first, last = items.first().finished_at, items.last().finished_at
    assert (last - first).total_seconds() >= 1.8
