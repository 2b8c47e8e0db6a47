"""The baseline tasks: a Celery round trip that does nothing but count itself in Redis, and one that
does the least `times` steps of a context that size must do, each in its own transaction (read the
context, parse it, change it, serialise it, write it back with one raw SQL UPDATE): quick steps of
an instance run chained in one task, each step's result written as it ends."""

import json
import os

import redis
from celery import shared_task

_counter = redis.Redis.from_url(os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/9"))
COUNTER_KEY = "bench:noop:done"


@shared_task(acks_late=True, ignore_result=True)
def noop(index: int) -> None:
    _counter.incr(COUNTER_KEY)


@shared_task(acks_late=True, ignore_result=True)
def rewrite_context(instance_id: int, times: int) -> None:
    from django.db import connection, transaction

    for _ in range(times):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT context::text FROM workflows_workflowinstance WHERE id = %s FOR UPDATE", [instance_id]
            )
            context = json.loads(cursor.fetchone()[0])
            context["n"] += 1
            cursor.execute(
                "UPDATE workflows_workflowinstance SET context = %s::jsonb, revision = revision + 1 WHERE id = %s",
                [json.dumps(context), instance_id],
            )
    _counter.incr(COUNTER_KEY, times)
