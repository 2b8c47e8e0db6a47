"""The one reading of "the row with the id a user gave": parse it, fetch it, or say which field is wrong."""

from __future__ import annotations

from typing import Any

from django.db.models import Model, QuerySet

from .errors import NotFound
from .numbers import parse_id


def row_by_id[M: Model](rows: QuerySet[M], value: Any, field: str, *, noun: str | None = None) -> M:
    """The row of `rows` (lock or joins as the caller chose) whose id is `value`.

    InvalidInput naming `field` when `value` is not an id, NotFound ("no <noun> #id") when there is no such row.
    """
    pk = parse_id(value, field, label=f"{field} id")
    row = rows.filter(pk=pk).first()
    if row is None:
        raise NotFound(f"no {noun or field} #{pk}", field=field)
    return row
