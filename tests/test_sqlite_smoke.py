"""The embedded default (the demo's): SQLite and the filesystem broker, with a real Celery worker.

Everything runs in subprocesses against a fresh SQLite file and broker folder, never the PostgreSQL
test database: migrate, seed, steps run by the worker, a live batch, its rollback and a cancel. It
runs the vendor branches that PostgreSQL never takes (the ORM paths of the chunk executor and bulk
writes, the live selection without OFFSET, the counts read with COUNT).
"""

import json
import os
import select
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from .worker import ROOT, WorkerProcess

pytestmark = pytest.mark.worker

SOURCE, TARGET = "1.0.0", "2.0.0"


@pytest.fixture
def embedded(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}",
        "CELERY_BROKER_URL": "filesystem://",
        "WORKFLOWS_DATA_DIR": str(tmp_path),  # settings put the broker's folders under it
        "WORKFLOWS_MODULES": "workflows_admin.demo.research_agent",
        "RESEARCH_AGENT_STEP_SECONDS": "0.2",
        "CELERY_BROKER_POLLING_INTERVAL": "0.1",  # not 1 s a task hop: the batch's chunks chain several
        "PYTHONPATH": str(ROOT),
    }
    env.pop("DATABASE_TEST_NAME", None)
    return env


def manage(env, *args: str, timeout: float = 60) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"manage.py {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def command_json(env, *args: str) -> dict:
    """A `workflows` subcommand's --json result: the JSON object it prints last. A batch that retries
    for ever (as the live selection's OFFSET did on SQLite) fails here, on the timeout of --wait."""
    return json.loads(manage(env, "workflows", *args, "--json", timeout=30).strip().splitlines()[-1])


QUERY_LOOP = """
import json, sys
from django.db import connection
from workflows_admin.workflows.models import *
from workflows_admin.workflows.services import batches
for line in sys.stdin:
    scope = dict(globals())
    exec(json.loads(line), scope)
    print("RESULT", json.dumps(scope["result"], default=str), flush=True)
"""


class EmbeddedShell:
    """One `manage.py shell` on the embedded database that runs each query sent to it: Django starts
    once (about 1 s a start here) instead of once a query. Autocommit: each query sees what the
    worker and the commands committed before it."""

    def __init__(self, env):
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-c", QUERY_LOOP],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def query(self, code: str, timeout: float = 60):
        """Run `code` (with the models imported); return its `result` as JSON."""
        self.process.stdin.write(json.dumps(code) + "\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.process.stdout], [], [], 0.5)[0]:
                line = self.process.stdout.readline()
                if line.startswith("RESULT "):
                    return json.loads(line.removeprefix("RESULT "))
                if not line:
                    raise AssertionError(f"the shell exited running {code}:\n{self.process.stderr.read()}")
        raise AssertionError(f"timed out running {code}")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=20)


def wait_for(shell, code: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := shell.query(code):
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {code}")


def test_embedded_default_runs_steps_batches_rollback_and_cancel(embedded):
    env = embedded
    manage(env, "migrate", "--verbosity", "0")
    manage(env, "seed_demo", "--instances", "60")
    shell = EmbeddedShell(env)
    worker = WorkerProcess(concurrency=2, pool="threads", extra_env=env)
    try:
        run_the_smoke(env, shell, worker)
    finally:
        worker.stop()
        shell.close()


def run_the_smoke(env, shell, worker):
    seeded = shell.query(
        f"result = [connection.vendor, WorkflowInstance.objects.filter(version__version='{SOURCE}', "
        "status__in=IN_FLIGHT_STATUSES).count()]",
    )
    assert seeded[0] == "sqlite" and seeded[1] > 0, seeded

    worker.start()
    # Steps run: instances go past their first step, with their step runs recorded.
    wait_for(
        shell,
        "result = WorkflowInstance.objects.filter(step_runs__outcome='succeeded')"
        ".exclude(current_step='analyze').exists()",
    )

    # A live batch (no preview), run by the worker.
    batch = command_json(env, "migrate", "research-agent", "--from", SOURCE, "--to", TARGET, "--wait")
    assert batch["state"] == "completed", batch
    assert batch["migrated"] >= 1 and batch["failed"] == 0, batch
    on_version = (
        f"moved = list(BatchItem.objects.filter(batch_id={batch['batch_id']}, state='succeeded')"
        ".values_list('instance_id', flat=True))\n"
        "result = [len(moved), WorkflowInstance.objects.filter(pk__in=moved, version__version='{version}').count()]"
    )
    assert shell.query(on_version.format(version=TARGET)) == [batch["migrated"]] * 2

    # Its rollback, forced: the steps went on running on the migrated instances meanwhile.
    rollback = command_json(env, "rollback", str(batch["batch_id"]), "--force", "--wait")
    assert rollback["kind"] == "rollback" and rollback["state"] == "completed", rollback
    assert rollback["migrated"] == batch["migrated"], rollback
    assert shell.query(on_version.format(version=SOURCE)) == [batch["migrated"]] * 2

    # A cancel: a batch scheduled for later is cancelled before it takes anything.
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    scheduled = command_json(env, "migrate", "research-agent", "--from", SOURCE, "--to", TARGET, "--start-at", later)
    assert scheduled["state"] not in ("completed", "cancelled"), scheduled
    cancelled = shell.query(
        f"batch = batches.cancel_batch({scheduled['batch_id']}, actor='system:smoke')\n"
        "result = [batch.state, batch.items.filter(state='succeeded').count()]",
    )
    assert cancelled == ["cancelled", 0], cancelled
    assert shell.query(on_version.format(version=SOURCE)) == [batch["migrated"]] * 2
