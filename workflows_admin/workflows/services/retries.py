"""Retrying a whole transaction that PostgreSQL chose as a deadlock victim.

Counter rows (locked when instances change) and version rows (locked by lifecycle changes and by the
deferred foreign-key checks at commit) can be taken in opposite orders by two transactions. PostgreSQL
then aborts one of them; nothing of it was written, so running it again is safe.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

from django.db import OperationalError, connection
from psycopg.errors import DeadlockDetected

logger = logging.getLogger(__name__)


def retry_on_deadlock[**P, T](attempts: int = 3, pause: float = 0.05) -> Callable[[Callable[P, T]], Callable[P, T]]:
    def decorate(function: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(function)
        def wrapped(*args: P.args, **kwargs: P.kwargs) -> T:
            for attempt in range(1, attempts + 1):
                try:
                    return function(*args, **kwargs)
                except OperationalError as error:
                    retryable = isinstance(error.__cause__, DeadlockDetected) and not connection.in_atomic_block
                    if not retryable or attempt == attempts:  # inside a caller's transaction: the caller retries
                        raise
                    logger.warning("%s was a deadlock victim (attempt %d); retrying", function.__name__, attempt)
                    time.sleep(pause * attempt)
            raise AssertionError("unreachable")

        return wrapped

    return decorate
