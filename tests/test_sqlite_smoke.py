"""The embedded default (the demo's): SQLite and the filesystem broker, with a real Celery worker.

Everything runs in subprocesses against a fresh SQLite file and broker folder, never the PostgreSQL
test database: migrate, seed, steps run by the worker, a live batch, its rollback and a cancel. It
runs the vendor branches that PostgreSQL never takes (the ORM paths of the chunk executor and bulk
writes, the live selection without OFFSET, the counts read with COUNT).
"""

import json
import os
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


def query(env, code: str):
    """Run `code` against the embedded database (with the models imported); return its `result` as JSON."""
    script = (
        "import json\n"
        "from django.db import connection\n"
        "from workflows_admin.workflows.models import *\n"
        "from workflows_admin.workflows.services import batches\n"
        f"{code}\n"
        "print(json.dumps(result, default=str))\n"
    )
    return json.loads(manage(env, "shell", "-c", script).strip().splitlines()[-1])


def wait_for(env, code: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := query(env, code):
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {code}")


def test_embedded_default_runs_steps_batches_rollback_and_cancel(embedded):
    env = embedded
    manage(env, "migrate", "--verbosity", "0")
    manage(env, "seed_demo", "--instances", "60")
    seeded = query(
        env,
        f"result = [connection.vendor, WorkflowInstance.objects.filter(version__version='{SOURCE}', "
        "status__in=IN_FLIGHT_STATUSES).count()]",
    )
    assert seeded[0] == "sqlite" and seeded[1] > 0, seeded

    worker = WorkerProcess(concurrency=2, pool="threads", extra_env=env).start()
    try:
        # Steps run: instances go past their first step, with their step runs recorded.
        wait_for(
            env,
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
        assert query(env, on_version.format(version=TARGET)) == [batch["migrated"]] * 2

        # Its rollback, forced: the steps went on running on the migrated instances meanwhile.
        rollback = command_json(env, "rollback", str(batch["batch_id"]), "--force", "--wait")
        assert rollback["kind"] == "rollback" and rollback["state"] == "completed", rollback
        assert rollback["migrated"] == batch["migrated"], rollback
        assert query(env, on_version.format(version=SOURCE)) == [batch["migrated"]] * 2

        # A cancel: a batch scheduled for later is cancelled before it takes anything.
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        scheduled = command_json(
            env, "migrate", "research-agent", "--from", SOURCE, "--to", TARGET, "--start-at", later
        )
        assert scheduled["state"] not in ("completed", "cancelled"), scheduled
        cancelled = query(
            env,
            f"batch = batches.cancel_batch({scheduled['batch_id']}, actor='system:smoke')\n"
            "result = [batch.state, batch.items.filter(state='succeeded').count()]",
        )
        assert cancelled == ["cancelled", 0], cancelled
        assert query(env, on_version.format(version=SOURCE)) == [batch["migrated"]] * 2
    finally:
        worker.stop()
