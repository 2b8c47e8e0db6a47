"""What a long benchmark costs besides time: worker and PostgreSQL memory, WAL written.

Memory is sampled from /proc while the run goes on (PostgreSQL must run on this machine): the
worker's pool processes by their peak resident set (VmHWM), the database's backends by their
private memory (RssAnon: shared buffers are not theirs and are counted once, not per backend).
"""

from __future__ import annotations

import threading
from pathlib import Path


def _status(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):  # the process ended meanwhile
        pass
    return 0


def worker_children_peak_kib(worker) -> int:
    """Peak resident memory (VmHWM) over the worker's pool processes."""
    peak = 0
    for child in Path(f"/proc/{worker.process.pid}/task").glob("*/children"):
        for pid in child.read_text().split():
            peak = max(peak, _status(int(pid), "VmHWM"))
    return peak


def wal_lsn() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_lsn()")
        return cursor.fetchone()[0]


def wal_bytes_since(lsn: str) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", [lsn])
        return int(cursor.fetchone()[0])


class BackendMemory:
    """Samples, every half second on a thread of its own, the private memory of the database's
    other backends (the worker's); `peak_kib` is the largest sum seen and `largest_kib` the largest
    single backend."""

    def __init__(self) -> None:
        self.peak_kib = self.largest_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BackendMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        from django.db import connection

        try:
            while not self._stop.wait(0.5):
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT pid FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                    sizes = [_status(pid, "RssAnon") for (pid,) in cursor.fetchall()]
                self.peak_kib = max(self.peak_kib, sum(sizes))
                self.largest_kib = max([self.largest_kib, *sizes])
        finally:
            connection.close()
