"""`Idempotency-Key` on POSTs: the first successful response per (user, endpoint, key) is stored in the
transaction of the action, and a retry gets it back instead of acting again.

Two requests with one key at once: the second one's INSERT waits on the unique index until the
first commits, then finds its response (or, if the first failed and left no row, acts itself).
The same key with another body is refused (422): it is a different request.

The action runs inside this wrapper's transaction, so a service cannot retry a deadlock itself (it
is not the outermost transaction): the wrapper retries the whole transaction, key row included.
"""

from __future__ import annotations

import hashlib
import logging
import time
from functools import wraps

from django.db import IntegrityError, transaction
from django.http import HttpResponse

from workflows_admin.workflows.services.errors import InvalidInput

from .auth import token_user
from .models import IdempotencyRecord
from .problems import from_service_error, is_deadlock_victim, problem

logger = logging.getLogger(__name__)
HEADER = "Idempotency-Key"
KEY_LENGTH = 200
DEADLOCK_ATTEMPTS = 3


def check_key(key: str) -> str:
    if not 1 <= len(key) <= KEY_LENGTH or not (key.isascii() and key.isprintable()):
        raise InvalidInput(f"{HEADER} must be 1 to {KEY_LENGTH} printable ASCII characters", field=HEADER)
    return key


def replay(record: IdempotencyRecord) -> HttpResponse:
    response = HttpResponse(record.body, status=record.status_code, content_type=record.content_type)
    response["Idempotent-Replayed"] = "true"
    return response


def idempotent(run):
    """Wraps a ninja operation's run (see ninja.decorators.decorate_view): whole responses in and out."""

    @wraps(run)
    def wrapped(request, *args, **kwargs):
        key = request.headers.get(HEADER)
        user = token_user(request) if key is not None else None
        if user is None:  # no key, or no valid token (the operation answers 401)
            return run(request, *args, **kwargs)
        try:
            key = check_key(key)
        except InvalidInput as error:
            return from_service_error(error)
        endpoint = f"{request.method} {request.path}"[:400]
        fingerprint = hashlib.sha256(request.body).hexdigest()
        for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
            response = _act_once(
                run, request, args, kwargs, user=user, key=key, endpoint=endpoint, fingerprint=fingerprint
            )
            if not is_deadlock_victim(response) or attempt == DEADLOCK_ATTEMPTS:
                return response
            logger.warning("%s with %s %r was a deadlock victim (attempt %d); retrying", endpoint, HEADER, key, attempt)
            time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    return wrapped


def _act_once(run, request, args, kwargs, *, user, key: str, endpoint: str, fingerprint: str) -> HttpResponse:
    """One transaction: claim the key (or find its stored answer), act, store the answer."""
    with transaction.atomic():
        try:
            with transaction.atomic():
                record = IdempotencyRecord.objects.create(
                    user=user, key=key, endpoint=endpoint, fingerprint=fingerprint
                )
        except IntegrityError:
            stored = IdempotencyRecord.objects.get(user=user, key=key, endpoint=endpoint)
            if stored.fingerprint != fingerprint:
                return problem(
                    422,
                    f"this {HEADER} was used for a request with another body; use a new key",
                    field=HEADER,
                )
            return replay(stored)
        response = run(request, *args, **kwargs)
        if not 200 <= response.status_code < 300:
            transaction.set_rollback(True)  # nothing acted (or it failed): a retry may act
            return response
        record.status_code = response.status_code
        record.body = response.content.decode()
        record.content_type = response.get("Content-Type", "application/json")
        record.save(update_fields=["status_code", "body", "content_type"])
    return response
