"""Context contracts: what a version's instance context must look like after every step."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema


class ContractViolation(ValueError):
    """A context that breaks a version's contract; `errors` lists every problem found."""

    def __init__(self, errors: list[str], version: str = ""):
        self.errors = errors
        self.version = version
        where = f" of version {version}" if version else ""
        super().__init__(f"context breaks the contract{where}: " + "; ".join(errors))


@dataclass(frozen=True)
class Contract:
    """Required top-level fields and/or a JSON Schema, or a pydantic model class.

    All errors are reported at once, so an operator sees every missing field in one dry-run.
    """

    required: tuple[str, ...] = ()
    schema: dict[str, Any] | None = None
    model: Any = None  # a pydantic BaseModel subclass; used through model_validate only
    _validator: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "required", tuple(self.required))
        if self.schema is not None:
            jsonschema.Draft202012Validator.check_schema(self.schema)
            object.__setattr__(self, "_validator", jsonschema.Draft202012Validator(self.schema))

    def errors(self, context: Any) -> list[str]:
        if not isinstance(context, dict):
            return [f"context must be a JSON object, got {type(context).__name__}"]
        problems = [f"missing required field '{name}'" for name in self.required if name not in context]
        if self._validator is not None:
            for error in sorted(self._validator.iter_errors(context), key=lambda e: list(e.path)):
                location = "/".join(str(p) for p in error.path) or "(root)"
                problems.append(f"{location}: {error.message}")
        if self.model is not None:
            try:
                self.model.model_validate(context)
            except Exception as exc:  # pydantic.ValidationError, without importing pydantic here
                problems.append(str(exc))
        return problems

    def validate(self, context: Any, version: str = "") -> None:
        problems = self.errors(context)
        if problems:
            raise ContractViolation(problems, version)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description for the version page."""
        description: dict[str, Any] = {"required": list(self.required)}
        if self.schema is not None:
            description["schema"] = self.schema
        if self.model is not None:
            description["model"] = f"{self.model.__module__}.{self.model.__qualname__}"
        return description


NO_CONTRACT = Contract()
# Far deeper than a context needs, and far from Python's recursion limit, which the JSON encoders (and the
# dashboard's indented rendering) would otherwise hit with a 500.
MAX_DEPTH = 100


def check_json_object(context: Any, max_bytes: int) -> str:
    """Return the JSON text of a context, or raise ValueError saying why it cannot be stored."""
    if not isinstance(context, dict):
        raise ValueError(f"context must be a JSON object (a dict), got {type(context).__name__}")
    problem = _structure_problem(context)  # first: json.dumps recurses as deep as the context goes
    if problem:
        raise ValueError(problem)
    try:
        text = json.dumps(context, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"context is not JSON-serialisable: {exc}") from None
    if len(text.encode()) > max_bytes:
        raise ValueError(f"context is {len(text.encode())} bytes, over the limit of {max_bytes} bytes")
    return text


def _structure_problem(context: dict) -> str:
    """Walk the context without recursion: nesting deeper than MAX_DEPTH, or a NUL character."""
    stack: list[tuple[Any, int]] = [(context, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return "context contains a NUL character (\\u0000), which PostgreSQL's JSON cannot store"
        elif isinstance(value, dict | list | tuple):
            if depth > MAX_DEPTH:
                return f"context is nested more than {MAX_DEPTH} levels deep"
            children = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
    return ""
