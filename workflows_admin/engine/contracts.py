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


def check_json_object(context: Any, max_bytes: int) -> str:
    """Return the JSON text of a context, or raise ValueError saying why it cannot be stored."""
    if not isinstance(context, dict):
        raise ValueError(f"context must be a JSON object (a dict), got {type(context).__name__}")
    try:
        text = json.dumps(context, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"context is not JSON-serialisable: {exc}") from None
    if _has_nul(context):
        raise ValueError("context contains a NUL character (\\u0000), which PostgreSQL's JSON cannot store")
    if len(text.encode()) > max_bytes:
        raise ValueError(f"context is {len(text.encode())} bytes, over the limit of {max_bytes} bytes")
    return text


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False
