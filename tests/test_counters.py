"""The trigger-kept counters always equal COUNT(*) per version and status, and per step."""

import threading

import pytest
from django.db import connection, connections
from django.db.models import Sum

from workflows_admin.workflows import counters
from workflows_admin.workflows.models import InstanceCount, InstanceStatus, WorkflowInstance
from workflows_admin.workflows.selectors import status_counts_by_version
from workflows_admin.workflows.services.instances import cancel_instance, start_workflows

from .helpers import drain_steps


def counted_rows() -> dict[int, dict[str, int]]:
    exact: dict[int, dict[str, int]] = {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT version_id, status, count(*) FROM workflows_workflowinstance GROUP BY 1, 2")
        for version_id, status, n in cursor.fetchall():
            exact.setdefault(version_id, {})[status] = n
    return exact


@pytest.mark.django_db
def test_counters_follow_inserts_updates_deletes(synced):
    assert counters.maintained(connection)
    started = start_workflows("toy", [{"n": i} for i in range(40)], version="1.0.0")
    start_workflows("toy", [{"n": i, "label": "x"} for i in range(25)], version="2.0.0")
    assert status_counts_by_version() == counted_rows()
    drain_steps([i.pk for i in started[:30]])
    cancel_instance(started[35].pk)
    WorkflowInstance.objects.filter(pk__in=[i.pk for i in started[36:]]).update(status=InstanceStatus.FAILED)
    WorkflowInstance.objects.filter(pk=started[0].pk).delete()
    assert status_counts_by_version() == counted_rows()
    assert counted_by_step() == rows_by_step()


def counted_by_step() -> dict[tuple, int]:
    grouped = InstanceCount.objects.values_list("version_id", "status", "current_step").annotate(total=Sum("n"))
    return {(version_id, status, step): total for version_id, status, step, total in grouped if total}


def rows_by_step() -> dict[tuple, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT version_id, status, current_step, count(*) FROM workflows_workflowinstance GROUP BY 1, 2, 3"
        )
        return {(version_id, status, step): n for version_id, status, step, n in cursor.fetchall()}


@pytest.mark.django_db(transaction=True)
def test_truncate_empties_the_counters(synced):
    start_workflows("toy", [{"n": i} for i in range(5)], version="1.0.0")
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE workflows_workflowinstance CASCADE")
    assert status_counts_by_version() == {}


@pytest.mark.django_db
def test_installing_on_a_database_with_rows_recounts_them(synced):
    start_workflows("toy", [{"n": i} for i in range(10)], version="1.0.0")
    with connection.cursor() as cursor:
        for name in counters.TRIGGER_NAMES:
            cursor.execute(f"DROP TRIGGER {name} ON workflows_workflowinstance")
        cursor.execute("DELETE FROM workflows_instancecount")
    assert counters.ensure_installed(connection) is True
    assert counters.ensure_installed(connection) is False  # already there: functions refreshed, no recount
    assert status_counts_by_version() == counted_rows()
    assert counted_by_step() == rows_by_step()


@pytest.mark.django_db(transaction=True)
def test_counters_stay_exact_under_concurrent_writers(synced):
    instances = start_workflows("toy", [{"n": i} for i in range(200)], version="1.0.0")
    ids = [i.pk for i in instances]
    errors = []

    def worker(part):
        try:
            for instance_id in part:
                WorkflowInstance.objects.filter(pk=instance_id).update(status=InstanceStatus.RUNNING)
                WorkflowInstance.objects.filter(pk=instance_id).update(status=InstanceStatus.COMPLETED)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(ids[k::4],)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert status_counts_by_version() == counted_rows()
    assert counted_by_step() == rows_by_step()
    assert sum(status_counts_by_version()[instances[0].version_id].values()) == 200
