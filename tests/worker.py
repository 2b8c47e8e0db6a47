"""A real Celery worker process against the real broker and the test database, for worker tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from workflows_admin.celery import app

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / "test-artifacts"


def database_url() -> str:
    db = connection.settings_dict
    user = db.get("USER") or "postgres"
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


class WorkerProcess:
    def __init__(
        self,
        concurrency: int = 2,
        extra_env: dict[str, str] | None = None,
        pool: str = "prefork",
        include: tuple[str, ...] = (),
        queues: tuple[str, ...] | None = None,
    ):
        self.concurrency = concurrency
        # Every queue the settings declare (steps, batches and control) unless a test says otherwise.
        self.queues = queues or tuple(queue.name for queue in settings.CELERY_TASK_QUEUES)
        self.pool = pool
        self.extra_env = extra_env or {}
        self.include = include  # extra task modules for the worker to import (celery --include)
        self.process: subprocess.Popen | None = None
        self.name = ""
        LOG_DIR.mkdir(exist_ok=True)

    def start(self, wait: bool = True) -> WorkerProcess:
        self.name = f"test-{uuid.uuid4().hex[:8]}@localhost"
        env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "WORKFLOWS_MODULES": "workflows_admin.demo.research_agent,tests.workflows_for_tests",
            "PYTHONPATH": str(ROOT),
            **self.extra_env,
        }
        self.log_path = LOG_DIR / f"worker-{self.name.split('@')[0]}.log"
        log = open(self.log_path, "w")  # noqa: SIM115  (closed with the process)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workflows_admin.celery",
                "worker",
                "-l",
                "INFO",
                "-c",
                str(self.concurrency),
                "-P",
                self.pool,
                "-n",
                self.name,
                "-Q",
                ",".join(self.queues),
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                *(["--include", ",".join(self.include)] if self.include else []),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            try:
                self.wait_ready()
            except Exception:
                self.kill()  # never leave a half-started worker behind
                raise
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}; see {LOG_DIR}")
            # The worker's own log, not a remote-control ping: pings always go through the test
            # process's broker, and a fault test's worker may use another one.
            if f"{self.name} ready." in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.05)  # reading the short log is cheap; every worker test waits here
        raise TimeoutError("worker did not become ready")

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as a crash would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def purge_broker() -> None:
    with app.connection_for_write() as conn:
        for queue in (queue.name for queue in settings.CELERY_TASK_QUEUES):
            conn.default_channel.queue_purge(queue)


@pytest.fixture
def worker_process(transactional_db):
    """A started worker; `.kill()` and `.start()` again to simulate crashes."""
    if not settings.CELERY_BROKER_URL.startswith(("redis://", "amqp://")):
        pytest.skip("worker tests need CELERY_BROKER_URL=redis://... (or amqp://)")
    purge_broker()
    worker = WorkerProcess().start()
    yield worker
    worker.stop()
    purge_broker()


def wait_until(predicate, timeout: float = 120, interval: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
