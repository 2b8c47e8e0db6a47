"""Load: the dashboard under 50 concurrent clients on loopback while a 100,000-instance batch runs.

The site runs under gunicorn (as in the Dockerfile) and each client is an operator's open browser
tab: it loads the overview and then polls as htmx does, the batch progress every second and the
overview counts every fifth request, with a version page now and then. The same batch is first
run on a quiet machine; the ratio of the two rates is the cost of the load. Targets: no failed
request, and the batch keeps more than half its quiet rate.

    python bench/load.py [--quick]
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.cookies import SimpleCookie

from common import ROOT, print_table, setup_django, size, truncate
from migration import fill, migrate_filled, run_batch

CLIENTS = 50
POLL_SECONDS = 1.0  # the batch page's hx-trigger="every 1s"
PASSWORD = "pw-load-operator-1"


class Site:
    """gunicorn serving the project on a free loopback port, with the benchmark's settings."""

    def __init__(self):
        from tests.faults import free_port

        self.port = free_port()
        # Production settings serve collected, hashed static files: collect them as a deploy would.
        self.static_root = tempfile.mkdtemp(prefix="wa-static-")
        env = {**os.environ, "DJANGO_ALLOWED_HOSTS": "127.0.0.1", "DJANGO_STATIC_ROOT": self.static_root}
        subprocess.run(
            [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
        )
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "workflows_admin.wsgi:application",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "2",
                "--threads",
                "8",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.connection().request("GET", "/accounts/login/")
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("gunicorn did not start")

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        shutil.rmtree(self.static_root, ignore_errors=True)


def log_in(site: Site, username: str) -> str:
    """Log in through the real login form (CSRF and all); return the session cookie header."""
    conn = site.connection()
    conn.request("GET", "/accounts/login/")
    page = conn.getresponse()
    csrf = SimpleCookie(page.getheader("Set-Cookie"))["csrftoken"].value
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.read().decode()).group(1)
    body = f"username={username}&password={PASSWORD}&csrfmiddlewaretoken={token}"
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={csrf}"}
    conn.request("POST", "/accounts/login/", body=body, headers=headers)
    answer = conn.getresponse()
    answer.read()
    assert answer.status == 302, f"login failed: {answer.status}"
    session = SimpleCookie(answer.getheader("Set-Cookie"))["sessionid"].value
    return f"csrftoken={csrf}; sessionid={session}"


class Client(threading.Thread):
    """One open dashboard tab: polls like htmx until told to stop; records latencies and failures."""

    def __init__(self, site: Site, cookie: str, urls: list[tuple[str, bool]], stop: threading.Event):
        super().__init__(daemon=True)
        self.site, self.cookie, self.urls, self.stop_event = site, cookie, urls, stop
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        conn = self.site.connection()
        turn = 0
        while not self.stop_event.is_set():
            path, partial = self.urls[turn % len(self.urls)]
            turn += 1
            headers = {"Cookie": self.cookie, **({"HX-Request": "true"} if partial else {})}
            started = time.perf_counter()
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    self.failures.append(f"{path}: HTTP {response.status}")
            except (OSError, http.client.HTTPException) as error:
                self.failures.append(f"{path}: {type(error).__name__} {error}")
                conn.close()
                conn = self.site.connection()
            self.latencies.append(time.perf_counter() - started)
            self.stop_event.wait(POLL_SECONDS)
        conn.close()


def operator() -> str:
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_superuser("load-operator", "load@example.com", PASSWORD)
    return "load-operator"


def loaded_batch(total: int, cookie: str, site: Site) -> tuple[float, list[Client], float]:
    """Run the batch while the clients poll; return (batch seconds, clients, seconds the clients ran)."""
    from workflows_admin.workflows.models import WorkflowVersion

    version = WorkflowVersion.objects.get(workflow__name="research-agent", version="1.0.0")
    truncate()
    fill(total)
    stop = threading.Event()
    clients: list[Client] = []
    opened_at = []

    def open_tabs(batch_id: int) -> None:
        opened_at.append(time.perf_counter())
        urls = [(f"/batches/{batch_id}/", True)] * 4 + [("/", True), (f"/versions/{version.pk}/", False)]
        for i in range(CLIENTS):
            clients.append(Client(site, cookie, urls[i % len(urls) :] + urls[: i % len(urls)], stop))
            clients[-1].start()

    batch_seconds, _ = migrate_filled(total, on_start=open_tabs)
    stop.set()
    for client in clients:
        client.join(timeout=60)
    return batch_seconds, clients, time.perf_counter() - opened_at[0]


def main() -> None:
    setup_django()
    from workflows_admin.workflows.services.registry_sync import sync_registry

    sync_registry()
    total = size(100_000, 3_000)
    quiet_seconds, _ = run_batch(total)
    site = Site()
    try:
        cookie = log_in(site, operator())
        loaded_seconds, clients, client_seconds = loaded_batch(total, cookie, site)
    finally:
        site.stop()
    truncate()
    latencies = sorted(latency for client in clients for latency in client.latencies)
    failures = [failure for client in clients for failure in client.failures]
    quiet_rate, loaded_rate = total / quiet_seconds, total / loaded_seconds
    print_table(
        f"Dashboard load: {CLIENTS} polling clients on gunicorn while a {total:,}-instance batch runs",
        [
            ("batch on a quiet machine", f"{quiet_rate:,.0f} instances/s ({quiet_seconds:.1f} s)"),
            ("batch under the load", f"{loaded_rate:,.0f} instances/s ({loaded_seconds:.1f} s)"),
            ("loaded / quiet", f"{loaded_rate / quiet_rate:.2f} (target > 0.5)"),
            ("requests", f"{len(latencies):,} in {client_seconds:.0f} s ({len(latencies) / client_seconds:.0f}/s)"),
            ("failed requests", f"{len(failures)} (target 0){': ' + failures[0] if failures else ''}"),
            (
                "latency median / p95 / max",
                f"{statistics.median(latencies) * 1000:.0f} / "
                f"{latencies[int(len(latencies) * 0.95)] * 1000:.0f} / {latencies[-1] * 1000:.0f} ms",
            ),
        ],
    )
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
