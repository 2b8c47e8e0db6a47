"""A transaction PostgreSQL picks as a deadlock victim runs again, whole; inside a caller's transaction
the error goes up to the caller instead. A real deadlock between two sessions, not a mock."""

import threading

import pytest
from django.db import OperationalError, connection, transaction
from psycopg.errors import DeadlockDetected

from workflows_admin.workflows.models import WorkflowVersion
from workflows_admin.workflows.services.retries import retry_on_deadlock

pytestmark = pytest.mark.django_db(transaction=True)


def lock_in_order(first: int, second: int, barrier: threading.Barrier, attempts: list[str], name: str):
    @retry_on_deadlock()
    def locking():
        attempts.append(name)
        with transaction.atomic():
            WorkflowVersion.objects.select_for_update().get(pk=first)
            if attempts.count(name) == 1:
                barrier.wait(timeout=10)  # both hold their first row: each now waits for the other's
            WorkflowVersion.objects.select_for_update().get(pk=second)

    try:
        locking()
    finally:
        connection.close()


def test_the_deadlock_victim_is_retried_and_both_succeed(synced):
    one, two = WorkflowVersion.objects.order_by("pk").values_list("pk", flat=True)[:2]
    barrier, attempts, errors = threading.Barrier(2), [], []

    def run(*args):
        try:
            lock_in_order(*args)
        except Exception as error:  # reported by the assertion below
            errors.append(error)

    threads = [
        threading.Thread(target=run, args=(one, two, barrier, attempts, "a")),
        threading.Thread(target=run, args=(two, one, barrier, attempts, "b")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(attempts) in (["a", "a", "b"], ["a", "b", "b"])  # exactly one victim, run once more


def test_inside_a_callers_transaction_the_deadlock_goes_up(synced):
    """Only the outermost transaction can be run again: the decorated function is not retried."""
    calls = []

    @retry_on_deadlock()
    def victim():
        calls.append(1)
        raise OperationalError("deadlock detected") from DeadlockDetected()

    with pytest.raises(OperationalError), transaction.atomic():
        victim()
    assert calls == [1]
    with pytest.raises(OperationalError):
        victim()  # outside a transaction: retried, then given up after the third attempt
    assert len(calls) == 1 + 3
