"""The baseline task: a Celery round trip that does nothing but count itself in Redis."""

import os

import redis
from celery import shared_task

_counter = redis.Redis.from_url(os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/9"))
COUNTER_KEY = "bench:noop:done"


@shared_task(acks_late=True, ignore_result=True)
def noop(index: int) -> None:
    _counter.incr(COUNTER_KEY)
