"""Declared migrations run in SQL: a batch on PostgreSQL moves the contexts it can without reading
them out of the database.

A migration path whose every hop is declared (engine/operations.py) is evaluated symbolically: each
top-level field of the result is a field of the context as stored, a declared value, or absent, so
the result is one expression on the stored context,

    (context - '{fields touched}') || jsonb_build_object('field', source, ...)

and `accepts` is a condition on the stored context under which that expression gives what the
Python operations give, and the result meets the target version's contract: the context is an
object, every renamed field is there, and the contract's required fields and property types hold.
The contract is translated only where the translation is exact or stricter (required fields;
a schema of property types, arrays of one item type); any other contract keeps the whole path in
Python. A row that `accepts` refuses is not failed in SQL: its context is read and the Python
operations decide, and word the failure, as in a dry-run.

Numbers stay exactly as stored here, where Python reads them into ints and floats: a number no
float holds exactly (0.1000000000000000000001, 1.5e-400, 1 followed by 400 zeros and ".5") is
changed by the Python path or refused by it, and kept by SQL. Every number the product writes came
from Python and reads back the same, so only a context written outside the product can tell.

Every fragment is SQL text with its literals inline, `%` doubled for the drivers' placeholders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.db import connection

from workflows_admin.engine import Contract, Default, Drop, MigrationPlan, Put, Rename
from workflows_admin.engine.contracts import has_surrogate

# JSON Schema type -> jsonb_typeof / jsonpath type() (both name them alike).
_TYPES = {"string": "string", "boolean": "boolean", "null": "null", "object": "object", "array": "array"}
_ITEM_TYPES = {**_TYPES, "number": "number"}  # jsonpath's type() names numbers as jsonb_typeof does
_NOTES = {"title", "description", "$comment"}  # annotations: no effect on validity
# Where the stored context goes in a fragment: NUL, which no declared name or value holds (json.dumps
# writes it escaped), so no literal can be mistaken for it.
_C = "\x00"
_PAIRS = 50


@dataclass(frozen=True)
class DeclaredSQL:
    """`expression(column)`: the migrated context; `accepts(column)`: when that is the Python result
    (`column`: the SQL of the stored context)."""

    _expression: str
    _accepts: str

    def expression(self, column: str) -> str:
        return self._expression.replace(_C, column)

    def accepts(self, column: str) -> str:
        return self._accepts.replace(_C, column)

    def read(self, column: str) -> str:
        """What a chunk reads of a context: nothing (NULL) where SQL will migrate it, else its text."""
        condition = self.accepts("once.decompressed")
        return f"(SELECT CASE WHEN {condition} THEN NULL ELSE CAST({column} AS text) END FROM {_once(column)})"

    def migrated(self, column: str) -> str:
        """The migrated context, the stored one decompressed once."""
        return f"(SELECT {self.expression('once.decompressed')} FROM {_once(column)})"


def _once(column: str) -> str:
    """The stored context, decompressed once for all the operators that read it: each -> on the
    stored value decompresses it again (LZ4 decompression was 18% of PostgreSQL's time in an
    agent-sized batch). `|| '{}'` hands back its operand detoasted, and OFFSET 0 keeps the planner
    from folding it into each use. (An array's `|| '{}'` appends; `accepts` refuses arrays anyway.)"""
    return f"(SELECT {column} || '{{}}'::jsonb AS decompressed OFFSET 0) AS once"


@dataclass(frozen=True)
class _Source:
    """Where a field of the result comes from: SQL giving its jsonb; `stored`: a field of the stored
    context, absent (NULL) where the row has no such field."""

    sql: str
    stored: bool = False


def for_plan(plan: MigrationPlan) -> DeclaredSQL | None:
    """The plan as SQL, on PostgreSQL, when every hop is declared and the target contract translates."""
    if connection.vendor != "postgresql" or not plan.hops:
        return None
    fields: dict[str, _Source | None] = {}  # each field an operation touched: its source, None if removed
    conditions = [f"jsonb_typeof({_C}) = 'object'"]
    for hop in plan.hops:
        if hop.operations is None:
            return None
        for operation in hop.operations.operations:
            match operation:
                case Rename(old, new):
                    source = _source(fields, old)
                    if source is None:
                        return None  # renames a field that is never there: every context fails, in Python
                    if source.stored:
                        conditions.append(f"{source.sql} IS NOT NULL")
                    fields[new], fields[old] = source, None
                case Default(name, value):
                    source = _source(fields, name)
                    fields[name] = (
                        _Source(f"COALESCE({source.sql}, {_jsonb(value)})")
                        if source is not None and source.stored
                        else source or _Source(_jsonb(value))
                    )
                case Put(name, value):
                    fields[name] = _Source(_jsonb(value))
                case Drop(name):
                    fields[name] = None
    contract = _contract(plan.workflow.versions[plan.target].contract, fields)
    if contract is None:
        return None
    present = [f"{_text(name)}, {source.sql}" for name, source in fields.items() if source is not None]
    expression = f"({_C} - {_text_array(list(fields))})"
    for start in range(0, len(present), _PAIRS):  # a function takes at most 100 arguments
        expression += f" || jsonb_build_object({', '.join(present[start : start + _PAIRS])})"
    return DeclaredSQL(expression, " AND ".join(f"({c})" for c in dict.fromkeys(conditions + contract)))


def _source(fields: dict[str, _Source | None], name: str) -> _Source | None:
    """The field's source so far: as an operation left it, or the stored context's own field."""
    return fields[name] if name in fields else _Source(f"{_C} -> {_text(name)}", stored=True)


def _contract(contract: Contract, fields: dict[str, _Source | None]) -> list[str] | None:
    """The contract as conditions on the stored context (the result's fields through `fields`), or
    None where it cannot be said exactly or more strictly in SQL."""
    if contract.model is not None:
        return None
    schema_names = (contract.schema or {}).get("properties", {})
    names = [*contract.required, *(schema_names if isinstance(schema_names, dict) else [])]
    if any(not isinstance(name, str) or "\x00" in name or has_surrogate(name) for name in names):
        return None  # a name no stored field can have (operations refuse these when declared)
    conditions = []
    required = list(contract.required)
    schema = dict(contract.schema or {})
    for note in _NOTES | {"$schema"}:
        schema.pop(note, None)
    if schema.pop("type", "object") != "object":
        return None
    required += schema.pop("required", [])
    properties = schema.pop("properties", {})
    if schema or not isinstance(properties, dict):
        return None  # any other keyword: Python judges
    for name in dict.fromkeys(required):
        source = _source(fields, name)
        if source is None:
            return None  # every result misses it: Python fails them all, with the message
        if source.stored:
            conditions.append(f"{source.sql} IS NOT NULL")
    for name, rule in properties.items():
        check = _property(rule)
        if check is None:
            return None
        source = _source(fields, name)
        if source is not None:
            checked = check.replace("{value}", f"({source.sql})")
            conditions.append(f"{source.sql} IS NULL OR {checked}" if source.stored else checked)
    return conditions


def _property(rule: Any) -> str | None:
    """A property's schema as a condition on `{value}` (its jsonb), when it only names types."""
    if not isinstance(rule, dict):
        return None
    rule = {key: value for key, value in rule.items() if key not in _NOTES}
    kind = rule.pop("type", None)
    items = rule.pop("items", None)
    if rule or kind is None:
        return None
    check = _type_check(kind, "{value}")
    if check is None:
        return None
    if items is None:
        return check
    if kind != "array" or not isinstance(items, dict) or set(items) - _NOTES != {"type"}:
        return None
    item_type = _ITEM_TYPES.get(items["type"]) if isinstance(items["type"], str) else None
    if item_type is None:
        return None  # integer items (1.0 is one to Python's validator), unions: Python judges
    # Strict: lax mode would unwrap an item that is itself an array. The CASE keeps a non-array
    # (which strict mode refuses with an error) away from the path.
    path = _text(f'strict $[*] ? (@.type() != "{item_type}")')
    return f"CASE WHEN {check} THEN NOT jsonb_path_exists({{value}}, {path}::jsonpath) ELSE false END"


def _type_check(kind: Any, value: str) -> str | None:
    if kind == "number":  # JSON Schema's number is jsonb's: booleans are not numbers in either
        return f"jsonb_typeof({value}) = 'number'"
    if not isinstance(kind, str) or kind not in _TYPES:
        return None  # integer (1.0 is one to Python's validator), unions: Python judges
    return f"jsonb_typeof({value}) = '{_TYPES[kind]}'"


def _text(value: str) -> str:
    """A SQL string literal, the same whatever standard_conforming_strings says (an escape string:
    backslashes and quotes doubled), with % doubled for the drivers' placeholders."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''").replace("%", "%%") + "'"


def _text_array(values: list[str]) -> str:
    return f"ARRAY[{', '.join(_text(v) for v in values)}]::text[]"


def _jsonb(value: Any) -> str:
    return f"{_text(json.dumps(value, allow_nan=False))}::jsonb"
