"""Load: the dashboard under 50 concurrent clients on loopback while a 100,000-instance batch runs.

The site runs under gunicorn (as in the Dockerfile) and each client is an operator's browser tabs,
doing what htmx does there: opened over five seconds on the page of a previewed batch, it loads the
batch page, the overview and the version page, then polls the batch progress every second and the
overview counts every five seconds, each request waiting for the previous answer: 50 clients make
about 60 requests a second, for 60 s in all. Once every tab is open the batch is confirmed and runs
inside that window. The same previewed batch first runs on a quiet machine; the ratio of the two
rates (from the confirm) is the cost of the load. Targets: no failed request, and the batch keeps
more than half its quiet rate.

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
from migration import fill, migrate_filled, run_previewed_batch

CLIENTS = 50
LOAD_SECONDS = size(60, 5)
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
    """One operator's tabs: page loads, then htmx polling until told to stop; records latencies and failures."""

    def __init__(self, site: Site, cookie: str, batch_id: int, version_id: int, stop: threading.Event, delay: float):
        super().__init__(daemon=True)
        self.site, self.cookie, self.stop_event, self.delay = site, cookie, stop, delay
        self.batch_url, self.version_url = f"/batches/{batch_id}/", f"/versions/{version_id}/"
        self.latencies: dict[str, list[float]] = {"page load": [], "batch poll": [], "overview poll": []}
        self.failures: list[str] = []

    def run(self) -> None:
        if self.stop_event.wait(self.delay):
            return
        conn = self.site.connection()
        for path in (self.batch_url, "/", self.version_url):
            conn = self.get(conn, path, partial=False)
        second = 0
        while not self.stop_event.wait(POLL_SECONDS):
            second += 1
            conn = self.get(conn, self.batch_url, partial=True)  # hx-trigger="every 1s"
            if second % 5 == 0:
                conn = self.get(conn, "/", partial=True)  # hx-trigger="every 5s"
        conn.close()

    def get(self, conn: http.client.HTTPConnection, path: str, partial: bool) -> http.client.HTTPConnection:
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
        kind = "page load" if not partial else "batch poll" if path == self.batch_url else "overview poll"
        self.latencies[kind].append(time.perf_counter() - started)
        return conn


def operator() -> str:
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_superuser("load-operator", "load@example.com", PASSWORD)
    return "load-operator"


def loaded_batch(total: int, cookie: str, site: Site) -> tuple[float, list[Client], float]:
    """Run the batch while the clients poll; return (batch seconds, clients, seconds the clients ran).

    As on the dashboard: the preview makes the batch page, the operators open it (their tabs over
    five seconds) and watch, then the batch is confirmed and runs under their polling. (A batch now
    takes seconds: started with the tabs, it ran inside their burst of 150 page loads.)
    """
    from workflows_admin.workflows.models import WorkflowVersion
    from workflows_admin.workflows.services.batches import preview_migration

    version = WorkflowVersion.objects.get(workflow__name="research-agent", version="1.0.0")
    truncate()
    fill(total)
    preview = preview_migration("research-agent", source="1.0.0", target="2.0.0", freeze=True, actor="system:bench")
    stop = threading.Event()
    opened_at = time.perf_counter()
    clients = [
        Client(site, cookie, int(preview.selection_token), version.pk, stop, delay=5 * i / CLIENTS)
        for i in range(CLIENTS)
    ]
    for client in clients:
        client.start()
    time.sleep(5 + POLL_SECONDS)  # every tab open and polling
    batch_seconds, _ = migrate_filled(total, selection_token=preview.selection_token)
    # The load goes on for LOAD_SECONDS in all, however soon the batch is done: no errors for that long.
    time.sleep(max(0.0, opened_at + LOAD_SECONDS - time.perf_counter()))
    stop.set()
    for client in clients:
        client.join(timeout=60)
    return batch_seconds, clients, time.perf_counter() - opened_at


def main() -> None:
    setup_django()
    from workflows_admin.workflows.services.registry_sync import sync_registry

    sync_registry()
    total = size(100_000, 3_000)  # previewed, then confirmed: the rates count from the confirm
    _, quiet_seconds = run_previewed_batch(total)
    site = Site()
    try:
        cookie = log_in(site, operator())
        loaded_seconds, clients, client_seconds = loaded_batch(total, cookie, site)
    finally:
        site.stop()
    truncate()
    by_kind = {kind: sorted(t for client in clients for t in client.latencies[kind]) for kind in clients[0].latencies}
    requests = sum(len(times) for times in by_kind.values())
    failures = [failure for client in clients for failure in client.failures]
    quiet_rate, loaded_rate = total / quiet_seconds, total / loaded_seconds
    print_table(
        f"Dashboard load: {CLIENTS} polling clients on gunicorn while a {total:,}-instance batch runs",
        [
            ("batch on a quiet machine", f"{quiet_rate:,.0f} instances/s ({quiet_seconds:.1f} s)"),
            ("batch under the load", f"{loaded_rate:,.0f} instances/s ({loaded_seconds:.1f} s)"),
            ("loaded / quiet", f"{loaded_rate / quiet_rate:.2f} (target > 0.5)"),
            ("requests", f"{requests:,} in {client_seconds:.0f} s ({requests / client_seconds:.0f}/s)"),
            ("failed requests", f"{len(failures)} (target 0){': ' + failures[0] if failures else ''}"),
            *((f"{kind}: median / p95 / max", _percentiles(times)) for kind, times in by_kind.items() if times),
        ],
    )
    if failures:
        sys.exit(1)


def _percentiles(times: list[float]) -> str:
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    return f"{statistics.median(times) * 1000:.0f} / {p95 * 1000:.0f} / {times[-1] * 1000:.0f} ms ({len(times):,})"


if __name__ == "__main__":
    main()
