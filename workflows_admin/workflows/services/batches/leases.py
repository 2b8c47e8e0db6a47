"""Chain leases renewed while a chain's task runs: one keeper thread per worker process.

A chunk can run for as long as its migrators take (a slow migrator, a large context), far past a
lease of a few seconds; the keeper vouches for the process's chains every third of a lease, on its
own connection, outside the chunks' transactions (which it must not wait for: see BatchChain).
Prefork children do not inherit threads, so the keeper starts on first use in each process.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connection

from .scheduling import renew

logger = logging.getLogger(__name__)


class ChainKeeper:
    def __init__(self) -> None:
        self._held: Counter[int] = Counter()  # chain id -> tasks of it running in this process
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid = 0

    @contextmanager
    def holding(self, chain: int) -> Iterator[None]:
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, daemon=True, name="chain-lease-keeper").start()
            idle = not self._held
            self._held[chain] += 1
        if idle:
            self._wake.set()
        try:
            yield
        finally:
            with self._lock:
                self._held[chain] -= 1
                if self._held[chain] <= 0:
                    del self._held[chain]

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._renew_held():
                self._wake.wait(settings.WORKFLOWS_BATCH_LEASE_SECONDS / 3)
                self._wake.clear()
            connection.close()  # idle between batches: no connection held by every worker process

    def _renew_held(self) -> bool:
        with self._lock:
            chains = sorted(self._held)
        if not chains:
            return False
        try:
            renew(chains, skip_locked=True)
        except Exception:  # a dropped connection: the next round tries again on a new one
            logger.warning("could not renew chain leases %s", chains, exc_info=True)
            connection.close()
        return True


keeper = ChainKeeper()
