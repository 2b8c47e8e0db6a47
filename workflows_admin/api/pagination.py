"""Cursor pagination: newest first, `next_cursor` names where the next page starts (opaque to clients)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Annotated, Any

from ninja import Path, Query

from workflows_admin.workflows.services.errors import InvalidInput
from workflows_admin.workflows.services.numbers import MAX_ID

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# A page size, and a row id in a path: JSON-schema bounds, so a forged id is a 400 before any query.
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Rows per page")]
RowId = Annotated[int, Path(ge=1, le=MAX_ID)]


def encode(pk: int) -> str:
    return base64.urlsafe_b64encode(f"id:{pk}".encode()).decode().rstrip("=")


def decode(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (ValueError, UnicodeError):
        text = ""
    kind, _, digits = text.partition(":")
    if kind != "id" or not digits.isascii() or not digits.isdigit() or len(digits) > 19 or int(digits) > MAX_ID:
        raise InvalidInput("cursor is not one this API gave out; start from the first page", field="cursor")
    return int(digits)


def paginate(queryset, cursor: str | None, limit: int, serialize: Callable[[Any], dict]) -> dict:
    rows = queryset.order_by("-pk")
    if cursor:
        rows = rows.filter(pk__lt=decode(cursor))
    found = list(rows[: limit + 1])
    more = len(found) > limit
    found = found[:limit]
    return {"items": [serialize(row) for row in found], "next_cursor": encode(found[-1].pk) if more else None}
