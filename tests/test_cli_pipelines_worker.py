"""`--wait` against real workers, as a deploy pipeline uses it: it ends (a timeout, no worker for the
batches' queue) and its exit code tells the outcome (completed, with failures or conflicts, paused, cancelled)."""

import json
import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.db.models import F
from django.utils import timezone

from workflows_admin.workflows.cli import exit_codes
from workflows_admin.workflows.models import MigrationBatch, WorkflowInstance
from workflows_admin.workflows.services.registry_sync import sync_registry

from .helpers import waiting_instances
from .test_cli_pipelines import cli
from .worker import ROOT, WorkerProcess, database_url, purge_broker, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
MIGRATE = ("migrate", "toy", "--from=1.0.0", "--to=2.0.0")
# The queue the chunk tasks are routed to, read from the routing configuration as the command must.
BATCHES_QUEUE = settings.CELERY_TASK_ROUTES["workflows_admin.workflows.tasks.process_batch_chunk"]["queue"]


def cli_process(*args: str) -> subprocess.Popen:
    """`manage.py workflows ARGS` as a deploy script runs it: its own process, on the test database."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "WORKFLOWS_MODULES": "workflows_admin.demo.research_agent,tests.workflows_for_tests",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "manage.py", "workflows", *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """The process's (stdout, stderr) once it exits; killed if it runs longer than `timeout` (a wait that hangs)."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise


def later() -> str:
    return (timezone.now() + timedelta(hours=1)).isoformat()


def waited(*args: str) -> tuple[int, dict]:
    code, out, _ = cli(*args, "--wait", "--json", "--timeout=60")
    return code, json.loads(out)


@pytest.fixture
def redis_broker():
    if not settings.CELERY_BROKER_URL.startswith(("redis://", "amqp://")):
        pytest.skip("worker tests need CELERY_BROKER_URL=redis://... (or amqp://)")
    purge_broker()
    sync_registry()
    yield
    purge_broker()


def test_wait_says_within_seconds_that_no_worker_consumes_the_batches_queue(redis_broker):
    waiting_instances(3)
    began = time.monotonic()
    process = cli_process(*MIGRATE, "--wait", "--json")  # no --timeout: it used to poll forever, silently
    out, err = finished(process, timeout=60)
    assert process.returncode == exit_codes.NO_WORKER and time.monotonic() - began < 20, (out, err)
    result = json.loads(out)
    assert (result["outcome"], result["queue"], result["exit_code"]) == ("no_worker", BATCHES_QUEUE, 7)
    assert f"no worker consumes the queue '{BATCHES_QUEUE}'" in err and f"batch #{result['batch_id']}" in err

    # A worker that only takes steps does not count: the batch's chunks would never be taken.
    steps_only = WorkerProcess(queues=("celery",)).start()
    try:
        code, out, message = cli(*MIGRATE, "--wait", "--json")
    finally:
        steps_only.stop()
    assert code == exit_codes.NO_WORKER and json.loads(out)["queue"] == BATCHES_QUEUE, message


def test_wait_exit_codes_tell_the_outcome(redis_broker):
    waiting_instances(4)
    good = list(WorkflowInstance.objects.order_by("pk").values_list("pk", flat=True))
    poisoned = good.pop()
    WorkflowInstance.objects.filter(pk=poisoned).update(context={"n": 0, "poison": True})
    worker = WorkerProcess().start()
    try:
        code, result = waited(*MIGRATE, f"--ids={good[0]}")
        assert (code, result["outcome"], result["migrated"]) == (exit_codes.OK, "completed", 1)
        first = result["batch_id"]

        code, result = waited(*MIGRATE)
        assert (code, result["outcome"], result["failed"], result["migrated"]) == (
            exit_codes.FAILURES,
            "completed_with_failures",
            1,
            2,
        )
        with_failures = result["batch_id"]
        code, result = waited("retry", str(with_failures))
        assert (code, result["failed"]) == (exit_codes.FAILURES, 1)

        # Every migrated instance moved on since: the rollback is all conflicts.
        WorkflowInstance.objects.filter(pk__in=good[1:]).update(revision=F("revision") + 1)
        code, result = waited("rollback", str(with_failures))
        assert (code, result["outcome"], result["conflicts"], result["migrated"]) == (
            exit_codes.FAILURES,
            "completed_with_failures",
            2,
            0,
        )

        waiting_instances(2)
        code, result = waited(*MIGRATE, "--canary=1")
        assert (code, result["outcome"], result["exit_code"]) == (exit_codes.PAUSED, "paused", 4)
        assert "batch resume" in result["message"]
        assert cli("batch", "cancel", str(result["batch_id"]))[0] == exit_codes.OK

        # Cancelled while a pipeline waits on it (scheduled for later, so it is still waiting).
        process = cli_process(*MIGRATE, f"--start-at={later()}", "--wait", "--json")
        wait_until(lambda: MigrationBatch.objects.filter(state="running").exists(), timeout=30, message="the start")
        assert cli("batch", "cancel", str(MigrationBatch.objects.get(state="running").pk))[0] == exit_codes.OK
        out, err = finished(process, timeout=30)
        assert process.returncode == exit_codes.CANCELLED and json.loads(out)["outcome"] == "cancelled", err

        began = time.monotonic()
        code, out, message = cli(*MIGRATE, f"--start-at={later()}", "--wait", "--json", "--timeout=2")
        assert code == exit_codes.TIMED_OUT and 2 <= time.monotonic() - began < 10
        assert json.loads(out)["outcome"] == "timed_out" and "not finished after 2s" in message

        # The human line names what a rollback did (its JSON keeps the published key, "migrated").
        code, out, _ = cli("rollback", str(first), "--wait", "--timeout=60")
        assert code == exit_codes.OK and "completed: 1 rolled back, 0 failed" in out, out
    finally:
        worker.stop()
