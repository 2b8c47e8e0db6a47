"""Declared migrations: a migration written as operations on the context's top-level fields
(rename, default, put, drop) instead of a function.

They run here, in Python, wherever a function migrator would (dry-runs, safe points, auto-upgrade
boundaries, the testing helper), and a batch on PostgreSQL runs them in SQL too: the contexts
never leave the database (workflows/declared_sql.py). Each operation says what it does, so a plan
can show an operator what a deploy will do to every context before it does it.

An operation's values are checked when it is declared: JSON only, as it will be stored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .contracts import has_lone_surrogate, has_surrogate, locate_text


class DeclarationError(ValueError):
    """An operation that could never be stored or run (a bad field name or value)."""


class OperationFailed(Exception):
    """One context cannot take an operation; `cause` names the operation and the field, for grouping."""

    def __init__(self, cause: str):
        self.cause = cause
        super().__init__(cause)


def _field(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise DeclarationError(f"{what}: a field name must be a non-empty string, got {name!r}")
    if "\x00" in name or has_surrogate(name):
        # A surrogate pair in a name is two code points here but one character once stored as JSON:
        # the name would never match a stored field, and no driver can send it as text.
        raise DeclarationError(
            f"{what}: the field name {name!r} cannot be stored (a NUL or a surrogate code point; write the "
            "character itself)"
        )
    return name


def _json_value(value: Any, what: str) -> Any:
    """`value` as it will be stored (tuples become lists), or a DeclarationError saying why it cannot be."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DeclarationError(f"{what}: the value is not JSON: {exc}") from None
    stored = json.loads(text)
    where = locate_text({"value": stored}, lambda s: "\x00" in s or has_lone_surrogate(s))
    if where:
        raise DeclarationError(f"{what}: the value holds a NUL or a lone surrogate {where}, which cannot be stored")
    return stored  # finite numbers only: json.dumps refused the others


@dataclass(frozen=True)
class Rename:
    """The field `old` becomes `new` (which it replaces if present); a context without `old` fails."""

    old: str
    new: str

    def __post_init__(self) -> None:
        _field(self.old, "rename"), _field(self.new, "rename")
        if self.old == self.new:
            raise DeclarationError(f"rename: {self.old!r} to itself does nothing")

    def apply(self, context: dict[str, Any]) -> None:
        if self.old not in context:
            raise OperationFailed(f"rename {self.old} -> {self.new}: no field '{self.old}'")
        context[self.new] = context.pop(self.old)

    def describe(self) -> str:
        return f"rename {self.old} to {self.new}"


@dataclass(frozen=True)
class _Valued:
    """An operation that writes a declared value to the field `name`: the value as it will be stored."""

    name: str
    value: Any
    verb: ClassVar[str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _json_value(self.value, f"{self.verb} {_field(self.name, self.verb)}"))


@dataclass(frozen=True)
class Default(_Valued):
    """The field `name` gets `value` where it is missing; a context that has it keeps its own."""

    verb = "default"

    def apply(self, context: dict[str, Any]) -> None:
        if self.name not in context:
            context[self.name] = _copy(self.value)

    def describe(self) -> str:
        return f"add {self.name} = {json.dumps(self.value)} where it is missing"


@dataclass(frozen=True)
class Put(_Valued):
    """The field `name` is set to `value` in every context, replacing what it held."""

    verb = "put"

    def apply(self, context: dict[str, Any]) -> None:
        context[self.name] = _copy(self.value)

    def describe(self) -> str:
        return f"set {self.name} = {json.dumps(self.value)}"


@dataclass(frozen=True)
class Drop:
    """The field `name` is removed where present."""

    name: str

    def __post_init__(self) -> None:
        _field(self.name, "drop")

    def apply(self, context: dict[str, Any]) -> None:
        context.pop(self.name, None)

    def describe(self) -> str:
        return f"remove {self.name}"


Operation = Rename | Default | Put | Drop


def _copy(value: Any) -> Any:
    """Each context its own copy of a declared value: a step that appends to it must not share it."""
    return json.loads(json.dumps(value)) if isinstance(value, dict | list) else value


def rename(old: str, new: str) -> Rename:
    return Rename(old, new)


def default(name: str, value: Any) -> Default:
    return Default(name, value)


def put(name: str, value: Any) -> Put:
    return Put(name, value)


def drop(name: str) -> Drop:
    return Drop(name)


class Operations:
    """A declared migration's operations, in order, as the migrator function the planner calls."""

    def __init__(self, operations: Sequence[Operation]):
        if not operations:
            raise DeclarationError("a declared migration needs at least one operation")
        for operation in operations:
            if not isinstance(operation, Rename | Default | Put | Drop):
                raise DeclarationError(
                    f"{operation!r} is not an operation: use rename, default, put or drop from workflows_admin.engine"
                )
        self.operations: tuple[Operation, ...] = tuple(operations)

    def __call__(self, context: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(context, dict):
            raise OperationFailed(f"context is a {type(context).__name__}, not an object")
        for operation in self.operations:
            operation.apply(context)
        return context

    def describe(self) -> list[str]:
        return [operation.describe() for operation in self.operations]

    def __repr__(self) -> str:
        return f"Operations({'; '.join(self.describe())})"
