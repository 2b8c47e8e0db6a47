"""Stale-instance cleanup on PostgreSQL: exactly the instances past their lifetime, idempotent, audited."""

import json
import threading
from collections import Counter
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from workflows_admin.workflows.models import (
    AuditEvent,
    InstanceStatus,
    Workflow,
    WorkflowInstance,
    WorkflowVersion,
)
from workflows_admin.workflows.services import lifecycle
from workflows_admin.workflows.services.cleanup import preview_cleanup, run_cleanup
from workflows_admin.workflows.services.steps import _claim, _execute, _write_result

from .helpers import run_batch

NOW = timezone.now()
DAY = timedelta(days=1)


def toy_version(label):
    return WorkflowVersion.objects.get(workflow__name="toy", version=label)


def make_instances(version, count, *, age, status=InstanceStatus.PENDING, context=None):
    """Instances as the runtime leaves them, started `age` before NOW (test data, not a start)."""
    started = NOW - age
    return WorkflowInstance.objects.bulk_create(
        WorkflowInstance(
            workflow_id=version.workflow_id,
            version=version,
            status=status,
            current_step=version.step_names[0],
            context=context or {"n": 0, "label": "x"},
            created_at=started,
            updated_at=started,
        )
        for _ in range(count)
    )


def instances_checksum() -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t.id), '')) || (SELECT count(*) FROM"
            " workflows_auditevent)::text FROM workflows_workflowinstance t"
        )
        return cursor.fetchone()[0]


def set_policy(target, lifetime, policy):
    type(target).objects.filter(pk=target.pk).update(max_lifetime=lifetime, stale_policy=policy)


@pytest.fixture
def toy_expiring_after_a_day(synced):
    """toy: lifetime 1 day, expire; 1.0.0 overrides it with 10 days, only report."""
    set_policy(Workflow.objects.get(name="toy"), DAY, Workflow.StalePolicy.EXPIRE)
    set_policy(toy_version("1.0.0"), 10 * DAY, Workflow.StalePolicy.REPORT)
    return toy_version("1.0.0"), toy_version("2.0.0")


@pytest.mark.django_db
def test_cleanup_expires_exactly_the_instances_past_their_lifetime(toy_expiring_after_a_day):
    v1, v2 = toy_expiring_after_a_day
    stale = [
        *make_instances(v2, 3, age=2 * DAY),
        *make_instances(v2, 1, age=DAY + timedelta(seconds=1), status=InstanceStatus.WAITING),
        *make_instances(v2, 1, age=5 * DAY, status=InstanceStatus.PARKED),
    ]
    fresh = make_instances(v2, 2, age=DAY - timedelta(seconds=1))
    at_the_limit = make_instances(v2, 1, age=DAY)  # not older than the lifetime: stays
    finished = make_instances(v2, 2, age=9 * DAY, status=InstanceStatus.COMPLETED)
    reported = make_instances(v1, 2, age=11 * DAY)
    young_v1 = make_instances(v1, 1, age=3 * DAY)  # stale by the workflow's day, not by its version's ten

    before = instances_checksum()
    plan = preview_cleanup(NOW)
    assert instances_checksum() == before  # a dry run changes nothing
    by_version = {item.version.version: item for item in plan.versions}
    assert set(by_version) == {"1.0.0", "2.0.0"}
    assert (by_version["2.0.0"].policy, by_version["2.0.0"].stale) == ("expire", 5)
    assert by_version["2.0.0"].instance_ids == [stale[4].pk, *[i.pk for i in stale[:3]], stale[3].pk]  # oldest first
    assert (by_version["1.0.0"].policy, by_version["1.0.0"].stale) == ("report", 2)
    assert by_version["1.0.0"].instance_ids == [i.pk for i in reported]

    result = run_cleanup(NOW)
    assert (result.expired, result.stale) == (5, 7)
    expired = set(WorkflowInstance.objects.filter(status=InstanceStatus.EXPIRED).values_list("pk", flat=True))
    assert expired == {i.pk for i in stale}
    untouched = [*fresh, *at_the_limit, *finished, *reported, *young_v1]
    assert all(
        WorkflowInstance.objects.get(pk=i.pk).revision == 1 and WorkflowInstance.objects.get(pk=i.pk).status == i.status
        for i in untouched
    )
    one = WorkflowInstance.objects.get(pk=stale[3].pk)
    assert "max lifetime (1 day, 0:00:00) of toy 2.0.0" in one.status_reason
    assert (one.revision, one.finished_at is not None, one.lease_expires_at) == (2, True, None)
    events = AuditEvent.objects.filter(action="instance.expired")
    assert sorted(events.values_list("instance_id", flat=True)) == sorted(expired)
    assert {e.actor_label for e in events} == {"system:cleanup"}
    # Run again: nothing left to do.
    assert run_cleanup(NOW).expired == 0 and events.count() == 5


@pytest.mark.django_db
def test_an_expired_instance_discards_the_result_of_its_running_step(toy_expiring_after_a_day):
    _, v2 = toy_expiring_after_a_day
    (instance,) = make_instances(v2, 1, age=2 * DAY)
    claim = _claim(instance.pk, 1)  # a worker is running its step
    assert run_cleanup(NOW).expired == 1
    assert _write_result(claim, _execute(claim), chain=False) == ("discarded", None)
    instance.refresh_from_db()
    assert instance.status == InstanceStatus.EXPIRED and instance.context == {"n": 0, "label": "x"}


@pytest.mark.django_db
def test_expiring_the_last_instance_of_a_draining_version_drains_it(toy_expiring_after_a_day):
    v1, _ = toy_expiring_after_a_day
    set_policy(v1, None, "")
    make_instances(v1, 2, age=3 * DAY)
    lifecycle.make_current(toy_version("1.0.0"))
    lifecycle.make_current(toy_version("2.0.0"))
    assert toy_version("1.0.0").state == WorkflowVersion.State.DRAINING
    run_cleanup(NOW, chunk_size=1)
    drained = toy_version("1.0.0")
    assert drained.state == WorkflowVersion.State.DRAINED and drained.drained_at is not None


@pytest.mark.django_db
def test_migrate_policy_hands_stale_instances_to_a_batch(synced):
    from workflows_admin.workflows.models import BatchItem, MigrationBatch

    set_policy(Workflow.objects.get(name="toy"), DAY, Workflow.StalePolicy.MIGRATE)
    stale = make_instances(toy_version("1.0.0"), 3, age=2 * DAY, context={"n": 0})
    make_instances(toy_version("1.0.0"), 1, age=DAY / 2, context={"n": 0})
    current_stale = make_instances(toy_version("2.0.0"), 1, age=2 * DAY)
    plan = run_cleanup(NOW)
    by_version = {item.version.version: item for item in plan.versions}
    assert "is the current version" in by_version["2.0.0"].error and by_version["2.0.0"].migrating == 0
    item = by_version["1.0.0"]
    assert (item.migrating, item.target.version, len(item.batch_ids)) == (3, "2.0.0", 1)
    selected = set(BatchItem.objects.filter(batch_id=item.batch_ids[0]).values_list("instance_id", flat=True))
    assert selected == {i.pk for i in stale}
    assert WorkflowInstance.objects.get(pk=current_stale[0].pk).status == InstanceStatus.PENDING
    # The next run leaves them to the open batch instead of starting a second one.
    assert run_cleanup(NOW).migrating == 0
    assert MigrationBatch.objects.count() == 1
    run_batch(item.batch_ids[0])
    migrated = WorkflowInstance.objects.filter(pk__in=[i.pk for i in stale])
    assert set(migrated.values_list("version__version", "context__label")) == {("2.0.0", "n=0")}
    event = AuditEvent.objects.get(action="cleanup.migration_started")
    assert (event.batch_id, event.details["instance_ids"]) == (item.batch_ids[0], [i.pk for i in stale])


@pytest.mark.django_db(transaction=True)
def test_two_cleanups_at_once_expire_each_instance_once(synced):
    set_policy(Workflow.objects.get(name="toy"), DAY, Workflow.StalePolicy.EXPIRE)
    stale = make_instances(toy_version("2.0.0"), 120, age=2 * DAY)
    make_instances(toy_version("2.0.0"), 10, age=DAY / 2)
    start = threading.Barrier(2)
    results, errors = [], []

    def clean_up(actor):
        try:
            start.wait()
            results.append(run_cleanup(NOW, actor=actor, chunk_size=7).expired)
        except Exception as exc:  # reported below; a thread's exception would otherwise vanish
            errors.append(exc)
        finally:
            connection.close()  # each thread had its own connection

    threads = [threading.Thread(target=clean_up, args=(f"system:cleanup-{n}",)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(results) == 120
    per_instance = Counter(AuditEvent.objects.filter(action="instance.expired").values_list("instance_id", flat=True))
    assert set(per_instance) == {i.pk for i in stale} and set(per_instance.values()) == {1}
    assert WorkflowInstance.objects.filter(status=InstanceStatus.EXPIRED, revision=2).count() == 120
    assert WorkflowInstance.objects.filter(status=InstanceStatus.PENDING, revision=1).count() == 10


@pytest.mark.django_db(transaction=True)
def test_two_cleanups_at_once_hand_each_stale_instance_to_one_migration_batch(synced):
    from workflows_admin.workflows.models import BatchItem

    from .worker import purge_broker

    set_policy(Workflow.objects.get(name="toy"), DAY, Workflow.StalePolicy.MIGRATE)
    stale = make_instances(toy_version("1.0.0"), 40, age=2 * DAY, context={"n": 0})
    start = threading.Barrier(2)
    errors = []

    def clean_up():
        try:
            start.wait()
            run_cleanup(NOW)
        except Exception as exc:  # reported below; a thread's exception would otherwise vanish
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=clean_up) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        purge_broker()  # the batches' chunk tasks: no worker runs in this test
    assert errors == []
    per_instance = Counter(BatchItem.objects.values_list("instance_id", flat=True))
    assert set(per_instance) == {i.pk for i in stale} and set(per_instance.values()) == {1}


@pytest.mark.django_db
def test_cleanup_subcommand_dry_run_and_run(toy_expiring_after_a_day):
    _, v2 = toy_expiring_after_a_day
    stale = make_instances(v2, 2, age=2 * DAY)

    def run(*args):
        out = StringIO()
        call_command("workflows", "cleanup", *args, stdout=out)
        return out.getvalue()

    before = instances_checksum()
    preview = json.loads(run("--dry-run", "--json"))
    assert instances_checksum() == before
    assert preview["dry_run"] is True and preview["stale"] == 2
    assert preview["versions"][0]["instance_ids"] == [i.pk for i in stale]
    text = run()
    assert "toy 2.0.0: 2 stale (older than 1 day, 0:00:00), policy expire; expired 2" in text
    assert AuditEvent.objects.filter(action="instance.expired", actor_label__startswith="cli:").count() == 2
    assert run() == "no stale instances\n"


@pytest.mark.django_db
def test_cleanup_refuses_a_bad_chunk_size_and_changes_nothing(toy_expiring_after_a_day):
    _, v2 = toy_expiring_after_a_day
    make_instances(v2, 2, age=2 * DAY)
    before = instances_checksum()
    with pytest.raises(CommandError, match=r"chunk_size must be a whole number from 1 to 5000, got 0 \[chunk_size\]"):
        call_command("workflows", "cleanup", "--chunk-size", "0")
    assert instances_checksum() == before


def research_version(label):
    return WorkflowVersion.objects.get(workflow__name="research-agent", version=label)


@pytest.fixture
def one_version_without_a_path(synced):
    """research-agent 2.1.0 migrates stale instances to the current 2.0.0, but no path leads there;
    toy expires its stale instances. research-agent comes first in the run."""
    lifecycle.make_current(research_version("2.0.0"))
    set_policy(research_version("2.1.0"), DAY, Workflow.StalePolicy.MIGRATE)
    set_policy(Workflow.objects.get(name="toy"), DAY, Workflow.StalePolicy.EXPIRE)
    stuck = make_instances(research_version("2.1.0"), 2, age=2 * DAY, context={"topic": "t"})
    stale = make_instances(toy_version("2.0.0"), 3, age=2 * DAY)
    return stuck, stale


@pytest.mark.django_db
def test_a_version_with_no_path_to_current_is_reported_and_the_rest_is_cleaned_up(one_version_without_a_path):
    from workflows_admin.workflows.tasks import clean_up_stale_instances

    stuck, stale = one_version_without_a_path
    preview = {item.version.version: item for item in preview_cleanup(NOW).versions}
    assert "no migration path from 2.1.0 to 2.0.0 in 'research-agent'" in preview["2.1.0"].error
    out = StringIO()
    call_command("workflows", "cleanup", "--dry-run", stdout=out)
    assert "research-agent 2.1.0: 2 stale" in out.getvalue()
    assert "not applied: no migration path from 2.1.0 to 2.0.0" in out.getvalue()

    assert clean_up_stale_instances.apply().get() == 3  # the periodic task succeeds with the rest done
    assert WorkflowInstance.objects.filter(pk__in=[i.pk for i in stale], status=InstanceStatus.EXPIRED).count() == 3
    assert WorkflowInstance.objects.filter(pk__in=[i.pk for i in stuck], status=InstanceStatus.PENDING).count() == 2
    event = AuditEvent.objects.get(action="cleanup.version_failed")
    assert event.version == research_version("2.1.0") and event.actor_label == "system:cleanup"
    assert "stale policy migrate not applied to 2 stale instance(s): no migration path" in event.message


@pytest.mark.django_db
def test_the_cleanup_page_shows_why_a_version_is_not_cleaned_up(one_version_without_a_path, client, operator):
    from django.urls import reverse

    client.force_login(operator)
    page = client.get(reverse("dashboard:cleanup")).content.decode().replace("&#x27;", "'")
    assert "no migration path from 2.1.0 to 2.0.0 in 'research-agent'" in page


@pytest.mark.django_db
def test_a_version_that_fails_during_the_run_is_reported_and_the_run_goes_on(synced, monkeypatch):
    """A failure the plan could not foresee (here the batch refused for toy 1.0.0) stops only that version."""
    from workflows_admin.workflows.services import cleanup
    from workflows_admin.workflows.services.errors import Conflict

    set_policy(Workflow.objects.get(name="toy"), DAY, Workflow.StalePolicy.MIGRATE)
    set_policy(toy_version("2.0.0"), DAY, Workflow.StalePolicy.EXPIRE)
    make_instances(toy_version("1.0.0"), 2, age=2 * DAY, context={"n": 0})
    expiring = make_instances(toy_version("2.0.0"), 2, age=2 * DAY)

    def refused(*args, **kwargs):
        raise Conflict("toy 2.0.0 takes no instances right now", field="target")

    monkeypatch.setattr(cleanup, "start_migration", refused)
    plan = run_cleanup(NOW, actor="system:cleanup")
    by_version = {item.version.version: item for item in plan.versions}
    assert by_version["1.0.0"].error == "toy 2.0.0 takes no instances right now"
    assert by_version["1.0.0"].migrating == 0 and by_version["2.0.0"].expired == 2
    assert WorkflowInstance.objects.filter(pk__in=[i.pk for i in expiring], status=InstanceStatus.EXPIRED).count() == 2
    event = AuditEvent.objects.get(action="cleanup.version_failed")
    assert event.version == toy_version("1.0.0") and "takes no instances right now" in event.message
