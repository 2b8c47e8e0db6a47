"""Writing many rows with one statement.

Django's bulk_update builds a CASE expression per field and row; for a 1,000-instance chunk that
is seconds of Python. On PostgreSQL the whole chunk goes as one JSON document, expanded by
jsonb_to_recordset into typed rows for a single UPDATE ... FROM: json.dumps runs in C, where
adapting one array per column cost more than the migration itself (profiled: 4.5 s of 9.5 s for
20,000 instances). Other databases (the SQLite demo) keep bulk_update.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date, datetime

from django.db import connections, router
from django.db.models import Model


def _json_default(value):
    if isinstance(value, date | datetime):
        return value.isoformat()  # timestamptz / date parse ISO 8601, offset included
    return str(value)  # UUID, Decimal: their text form is what PostgreSQL reads


def bulk_update_rows(objs: Sequence[Model], fields: Sequence[str]) -> int:
    """UPDATE the given fields of `objs` (all of one model) from their in-memory values."""
    if not objs:
        return 0
    model = type(objs[0])
    connection = connections[router.db_for_write(model)]
    if connection.vendor != "postgresql":
        return model.objects.bulk_update(objs, fields)
    meta = model._meta
    columns = [meta.pk, *(meta.get_field(name) for name in fields)]
    names = [column.attname for column in columns]
    rows = [{name: getattr(obj, name) for name in names} for obj in objs]
    # JSON null lands as SQL NULL, as Django stores None in a JSONField.
    document = json.dumps(rows, default=_json_default, allow_nan=False)
    record = ", ".join(f'"{column.attname}" {column.db_type(connection)}' for column in columns)
    assignments = ", ".join(f'"{column.column}" = v."{column.attname}"' for column in columns[1:])
    sql = (
        f'UPDATE "{meta.db_table}" AS t SET {assignments} FROM jsonb_to_recordset(%s::jsonb) AS v({record}) '
        f'WHERE t."{meta.pk.column}" = v."{meta.pk.attname}"'
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [document])
        return cursor.rowcount
