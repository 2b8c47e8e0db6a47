"""Writing many rows with one statement.

Django's bulk_update builds a CASE expression per field and row, and bulk_create one placeholder
per field and row, each value adapted by psycopg in Python: for a 1,000-row chunk that cost more
than the work itself (profiled: 4.5 s of 9.5 s migrating 20,000 instances; 1.6 s of 3.4 s starting
10,000). On PostgreSQL the rows go as one JSON document instead, expanded by json_to_recordset
into typed rows for a single UPDATE ... FROM or INSERT ... SELECT: json.dumps runs in C. Other
databases (the SQLite demo) use Django's bulk_create, and one UPDATE per row.

JSON columns travel as their JSON text, cast to jsonb in SQL, so a value that is already text
(JSONText: a migrated context, a snapshot read as text) is never parsed and serialised again. They
go beside the document, one text[] parameter per column sent in binary (ROWS FROM zips them with the
recordset by position), not inside it as JSON strings: a context inside the document was escaped by
json.dumps and unescaped by PostgreSQL, a cost that grows with the context (see the commit's figures).

A revision-checked UPDATE can write rows of another model in the same statement (`Following`), one
for each row it updated, their columns taken from the updated row as it was before or as written: a
batch's items take their snapshot (the old context) so, where sending it back cost a parse and a
compression per row, and need no document of their own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import psycopg
from django.db import connections, router
from django.db.models import Field, JSONField, Model


class JSONText(str):
    """A JSON document kept as its text, for a JSON column: written as is, never encoded again."""


def _json_default(value):
    if isinstance(value, date | datetime):
        return value.isoformat()  # timestamptz / date parse ISO 8601, offset included
    return str(value)  # UUID, Decimal: their text form is what PostgreSQL reads


def _column(model: type[Model], name: str) -> Field[Any, Any]:
    """The model's field that has a column (get_field also finds reverse relations, which have none)."""
    field = model._meta.get_field(name)
    if not isinstance(field, Field) or not field.concrete:
        raise ValueError(f"{model._meta.label}.{name} has no column to write")
    return field


def _source(columns, connection, extra: Sequence[tuple[str, str]] = (), alias: str = "v") -> str:
    """The FROM item `alias` the rows come from: the document's recordset (with `extra` (name, type)
    columns), zipped with one unnest(text[]) per JSON column, in the parameters' order."""
    plain = [column for column in columns if not isinstance(column, JSONField)]
    json_columns = [column for column in columns if isinstance(column, JSONField)]
    record = [(column.attname, str(column.db_type(connection))) for column in plain] + list(extra)
    definitions = ", ".join(f'"{name}" {db_type}' for name, db_type in record)
    if not json_columns:
        return f"json_to_recordset(%s::json) AS {alias}({definitions})"
    names = ", ".join(f'"{name}"' for name in [*(name for name, _ in record), *(c.attname for c in json_columns)])
    arrays = ", ".join("unnest(%b::text[])" for _ in json_columns)
    return f"ROWS FROM (json_to_recordset(%s::json) AS ({definitions}), {arrays}) AS {alias}({names})"


def _value(column, alias: str = "v") -> str:
    """The SQL for a column's value in the recordset `alias`: JSON columns arrive as text."""
    return f'{alias}."{column.attname}"::jsonb' if isinstance(column, JSONField) else f'{alias}."{column.attname}"'


def _document(objs: Sequence[Any], columns, extra: Sequence[str] = ()) -> list[Any]:
    """The parameters _source reads: the document of the plain columns, then each JSON column's texts."""
    plain = [column.attname for column in columns if not isinstance(column, JSONField)] + list(extra)
    rows = [{name: getattr(obj, name) for name in plain} for obj in objs]
    params: list[Any] = [json.dumps(rows, default=_json_default, allow_nan=False)]
    for name in (column.attname for column in columns if isinstance(column, JSONField)):
        # None stays SQL NULL, as Django stores None in a JSONField.
        params.append([_json_text(getattr(obj, name)) for obj in objs])
    return params


def _json_text(value: Any) -> str | None:
    if value is None or isinstance(value, JSONText):
        return value
    return json.dumps(value, allow_nan=False)


def _python_value(value):
    """A value as Django's ORM takes it (the SQLite path): JSON text parsed back."""
    return json.loads(value) if isinstance(value, JSONText) else value


def bulk_insert_rows(objs: Sequence[Model]) -> None:
    """INSERT new rows of one model from their in-memory values and set their primary keys."""
    if not objs:
        return
    model = type(objs[0])
    meta = model._meta
    connection = connections[router.db_for_write(model)]
    if connection.vendor != "postgresql":
        for obj in objs:
            for column in meta.concrete_fields:
                setattr(obj, column.attname, _python_value(getattr(obj, column.attname)))
        model._default_manager.bulk_create(objs)
        return
    columns = [field for field in meta.concrete_fields if not field.primary_key]
    names = ", ".join(f'"{column.column}"' for column in columns)
    values = ", ".join(_value(column) for column in columns)
    sql = (
        f'INSERT INTO "{meta.db_table}" ({names}) SELECT {values} FROM {_source(columns, connection)} '
        f'RETURNING "{meta.pk.column}"'
    )
    # RETURNING follows the rows' order, as Django's own bulk_create relies on for PostgreSQL.
    for obj, (pk,) in zip(objs, _execute(connection, sql, _document(objs, columns)), strict=True):
        obj.pk = pk
        obj._state.adding, obj._state.db = False, connection.alias


def bulk_insert_values(
    model: type[Model], rows: Sequence[Any], fields: Sequence[str], *, same_for_all: dict[str, Any] | None = None
) -> None:
    """INSERT new rows of `model` from plain objects carrying the fields' attribute names (no model
    instances built, no primary keys read back); `same_for_all` gives more fields one value each."""
    if not rows:
        return
    same_for_all = same_for_all or {}
    connection = connections[router.db_for_write(model)]
    meta = model._meta
    columns = [_column(model, name) for name in fields]
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create(
            model(**{column.attname: _python_value(getattr(row, column.attname)) for column in columns}, **same_for_all)
            for row in rows
        )
        return
    shared = [_column(model, name) for name in same_for_all]
    names = ", ".join(f'"{column.column}"' for column in [*columns, *shared])
    values = ", ".join([*(_value(column) for column in columns), *(f"%s::{f.db_type(connection)}" for f in shared)])
    sql = f'INSERT INTO "{meta.db_table}" ({names}) SELECT {values} FROM {_source(columns, connection)}'
    _execute(connection, sql, [*same_for_all.values(), *_document(rows, columns)])  # SELECT list before FROM


@dataclass(frozen=True)
class Following:
    """Rows of `model` that bulk_update_rows writes in its own statement: one for each of `rows`
    whose `key` attribute is the primary key of a row the UPDATE updated. Their values:
    `same_for_all`, each `copied` field (-> a column of the updated model) from the updated row as
    it was before the statement, and each `written` field (-> a column) as the statement wrote it:
    none of them sent per row, or parsed again. On SQLite every value comes from the rows' own
    attributes, which must hold the same. `insert`: new rows (the key written too); else the rows
    are updated by their primary key."""

    model: type[Model]
    rows: Sequence[Any]
    key: str
    copied: Mapping[str, str] = field(default_factory=dict)
    written: Mapping[str, str] = field(default_factory=dict)
    same_for_all: Mapping[str, Any] = field(default_factory=dict)
    insert: bool = False


def bulk_update_rows(
    model: type[Model],
    rows: Sequence[Any],
    fields: Sequence[str],
    *,
    same_for_all: dict[str, Any] | None = None,
    unless_changed: tuple[str, str] | None = None,
    following: Following | None = None,
    computed: Mapping[str, str] | None = None,
    carried: Mapping[str, str] | None = None,
) -> set:
    """UPDATE the given fields of `model`'s rows from `rows`: any objects carrying the model's primary
    key and the fields' attribute names (e.g. `version_id`), so a hot path builds no model instances.

    `same_for_all` sets more fields to one value each, sent once rather than in every row.
    `unless_changed=(column, attribute)` is a revision check: a row is updated only while its
    `column` still holds the row object's `attribute`. `following`: rows of another model written
    for the rows updated (see Following). `computed`: for a field whose value is None in a row, the
    SQL that computes it from the row as it is (alias t; `%` doubled), e.g. a declared migration's
    context; PostgreSQL only. `carried`: more attributes of each row (name -> SQL type) sent for
    that SQL to read (alias v), written to no column. Returns the primary keys updated.
    """
    same_for_all = same_for_all or {}
    computed = computed or {}
    if following is not None and unless_changed is None:
        # Without the check, an UPDATE could write over a newer row than the one `before` copies from.
        raise ValueError("a Following write needs the revision check (unless_changed)")
    if not rows:
        return set()
    connection = connections[router.db_for_write(model)]
    if connection.vendor != "postgresql":  # the SQLite demo, a handful of rows per chunk: one UPDATE each
        if computed:
            raise ValueError("computed values are written by PostgreSQL only")
        updated = _update_each(model, rows, fields, same_for_all, unless_changed)
        if following is not None:
            _write_following(following, [row for row in following.rows if getattr(row, following.key) in updated])
        return updated
    returning = [str(_column(model, name).column) for name in following.written.values()] if following else []
    sql, params = _update_sql(
        connection, model, rows, fields, same_for_all, unless_changed, returning, computed, carried or {}
    )
    if following is not None and following.rows:
        follow_sql, follow_params = _following_sql(connection, model, following)
        sql = f'WITH updated AS ({sql}), followed AS ({follow_sql}) SELECT "{model._meta.pk.column}" FROM updated'
        params += follow_params
    return {updated for (updated,) in _execute(connection, sql, params)}


def _update_each(model, rows, fields, same_for_all, unless_changed) -> set:
    pk = model._meta.pk.attname
    updated = set()
    for row in rows:
        values = {name: _python_value(getattr(row, name)) for name in (_column(model, f).attname for f in fields)}
        values.update(same_for_all)
        matching = model._default_manager.filter(pk=getattr(row, pk))
        if unless_changed:
            matching = matching.filter(**{unless_changed[0]: getattr(row, unless_changed[1])})
        if matching.update(**values):
            updated.add(getattr(row, pk))
    return updated


def _write_following(following: Following, rows: Sequence[Any]) -> None:
    fields = [*following.copied, *following.written]
    if following.insert:
        fields = [following.key, *fields]
        bulk_insert_values(following.model, rows, fields, same_for_all=dict(following.same_for_all))
    else:
        _update_each(following.model, rows, fields, dict(following.same_for_all), None)


def _update_sql(
    connection,
    model,
    rows,
    fields,
    same_for_all,
    unless_changed,
    returning: Sequence[str] = (),
    computed=None,
    carried: Mapping[str, str] | None = None,
) -> tuple[str, list[Any]]:
    meta = model._meta
    columns = [meta.pk, *(_column(model, name) for name in fields)]
    computed = {_column(model, name).attname: sql for name, sql in (computed or {}).items()}

    def assigned(column) -> str:
        value = _value(column)
        return f"COALESCE({value}, {computed[column.attname]})" if column.attname in computed else value

    assignments = ", ".join(
        [f'"{column.column}" = {assigned(column)}' for column in columns[1:]]
        + [
            f'"{field.column}" = %s::{field.db_type(connection)}'
            for field in (_column(model, name) for name in same_for_all)
        ]
    )
    condition = ""
    extra: tuple[str, ...] = ()
    checked_record: list[tuple[str, str]] = []
    if unless_changed:
        checked, extra = _column(model, unless_changed[0]), unless_changed[1:]
        checked_record = [(extra[0], str(checked.db_type(connection)))]
        condition = f' AND t."{checked.column}" = v."{extra[0]}"'
    checked_record += list((carried or {}).items())
    extra += tuple(carried or {})
    sql = (
        f'UPDATE "{meta.db_table}" AS t SET {assignments} FROM {_source(columns, connection, checked_record)} '
        f'WHERE t."{meta.pk.column}" = v."{meta.pk.attname}"{condition} '
        f"RETURNING {', '.join(f't.{chr(34)}{name}{chr(34)}' for name in dict.fromkeys([meta.pk.column, *returning]))}"
    )
    return sql, [*same_for_all.values(), *_document(rows, columns, extra)]  # SET comes before FROM


def _following_sql(connection, updated_model: type[Model], following: Following) -> tuple[str, list[Any]]:
    """The INSERT or UPDATE of `following`'s rows for the rows in `updated` (a CTE of their primary
    keys and written columns), its copied columns read from `before`: the updated table at the
    statement's snapshot, which its own UPDATE does not change (a statement's parts all read the
    same snapshot)."""
    model, meta = following.model, following.model._meta
    updated_table, updated_pk = updated_model._meta.db_table, updated_model._meta.pk.column
    key_column = _column(model, following.key)
    key = key_column.attname
    # The rows' document: the key (written only by an insert), and the primary key of a row updated.
    sent = [key_column] if following.insert else [meta.pk]
    extra = [] if following.insert else [(key, str(key_column.db_type(connection)))]
    derived = [
        *((_column(model, name), f"%s::{_column(model, name).db_type(connection)}") for name in following.same_for_all),
        *(
            (_column(model, name), f'before."{_column(updated_model, column).column}"')
            for name, column in following.copied.items()
        ),
        *(
            (_column(model, name), f'updated."{_column(updated_model, column).column}"')
            for name, column in following.written.items()
        ),
    ]
    rows_from = (
        f'{_source(sent, connection, extra, alias="u")} JOIN updated ON updated."{updated_pk}" = u."{key}" '
        f'JOIN "{updated_table}" AS before ON before."{updated_pk}" = u."{key}"'
    )
    document = _document(following.rows, sent, [name for name, _ in extra])
    params = [*following.same_for_all.values(), *document]  # SELECT list (or SET) before FROM
    if following.insert:
        names = ", ".join(f'"{column.column}"' for column in [key_column, *(column for column, _ in derived)])
        values = ", ".join([f'u."{key}"', *(value for _, value in derived)])
        return f'INSERT INTO "{meta.db_table}" ({names}) SELECT {values} FROM {rows_from}', params
    assignments = ", ".join(f'"{column.column}" = {value}' for column, value in derived)
    return (
        f'UPDATE "{meta.db_table}" AS f SET {assignments} FROM {rows_from} '
        f'WHERE f."{meta.pk.column}" = u."{meta.pk.attname}"',
        params,
    )


def _execute(connection, sql: str, params: Sequence[Any]) -> list[tuple]:
    """Run `sql` with its parameters bound server-side. Django's psycopg cursors bind client-side,
    quoting every parameter into the SQL text in Python: for a chunk's document (hundreds of KB)
    that was a tenth of the chunk. Errors still surface as Django's (tasks retry on those)."""
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []
