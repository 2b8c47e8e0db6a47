"""Context contracts: what a version's instance context must look like after every step."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import fastjsonschema
import jsonschema


class ContractViolation(ValueError):
    """A context that breaks a version's contract; `errors` lists every problem found."""

    def __init__(self, errors: list[str], version: str = ""):
        self.errors = errors
        self.version = version
        where = f" of version {version}" if version else ""
        super().__init__(f"context breaks the contract{where}: " + "; ".join(errors))


class Problem(NamedTuple):
    """One way a context breaks a contract. `cause` names the field path and the rule broken, without the
    offending value ("sources: type array"), so failures group by cause; `message` says it with the value."""

    cause: str
    message: str


def _location(path: Any) -> str:
    # Array positions are where a value sits, not a different field: "sources/*" groups every item.
    return "/".join("*" if isinstance(p, int) else str(p) for p in path) or "(root)"


def _rule(error: Any) -> str:
    """The schema rule a jsonschema error broke, e.g. "type array", "minimum 0", "enum"."""
    value = error.validator_value
    if error.validator == "type" and isinstance(value, list):
        return "type " + " or ".join(map(str, value))
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return f"{error.validator} {value}"
    return str(error.validator)


def _schema_problem(error: Any) -> Problem:
    location = _location(error.path)
    message = f"{'/'.join(str(p) for p in error.path) or '(root)'}: {error.message}"
    if error.validator == "required":  # the field that is missing is the cause, not the object holding it
        missing = next((p for p in error.validator_value if error.message == f"{p!r} is a required property"), None)
        if missing is not None:
            field_path = missing if location == "(root)" else f"{location}/{missing}"
            return Problem(f"{field_path}: required", message)
    return Problem(f"{location}: {_rule(error)}", message)


def _model_problems(exc: Exception) -> list[Problem]:
    """A pydantic ValidationError's errors by location and error type; any other exception as one problem."""
    details = getattr(exc, "errors", None)
    try:
        entries = details() if callable(details) else None
    except Exception:  # not pydantic's errors(): fall back to the text
        entries = None
    if not entries:
        return [Problem(f"model: {type(exc).__name__}", str(exc))]
    return [
        Problem(
            f"{_location(entry.get('loc', ()))}: {entry.get('type', 'invalid')}",
            f"{'/'.join(map(str, entry.get('loc', ()))) or '(root)'}: {entry.get('msg', '')}",
        )
        for entry in entries
    ]


@dataclass(frozen=True)
class Contract:
    """Required top-level fields and/or a JSON Schema, or a pydantic model class.

    All errors are reported at once, so an operator sees every missing field in one dry-run.
    """

    required: tuple[str, ...] = ()
    schema: dict[str, Any] | None = None
    model: Any = None  # a pydantic BaseModel subclass; used through model_validate only
    _validator: Any = field(default=None, init=False, repr=False, compare=False)

    _accepts: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "required", tuple(self.required))
        if self.schema is not None:
            jsonschema.Draft202012Validator.check_schema(self.schema)
            object.__setattr__(self, "_validator", jsonschema.Draft202012Validator(self.schema))
            object.__setattr__(self, "_accepts", compile_fast_check(self.schema))

    def errors(self, context: Any) -> list[str]:
        return [problem.message for problem in self.problems(context)]

    def problems(self, context: Any) -> list[Problem]:
        """Every problem with `context`, each with its cause (for grouping) and its message."""
        if not isinstance(context, dict):
            return [Problem("(root): type object", f"context must be a JSON object, got {type(context).__name__}")]
        problems = [
            Problem(f"{name}: required", f"missing required field '{name}'")
            for name in self.required
            if name not in context
        ]
        if self._validator is not None and not (self._accepts and self._accepts(context)):
            for error in sorted(self._validator.iter_errors(context), key=lambda e: list(e.path)):
                problems.append(_schema_problem(error))
        if self.model is not None:
            try:
                self.model.model_validate(context)
            except Exception as exc:  # pydantic.ValidationError, without importing pydantic here
                problems.extend(_model_problems(exc))
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


# Keywords whose meaning is the same in draft 7 (what fastjsonschema compiles) and in 2020-12, and
# that make a schema stricter wherever a subschema is stricter. Left out: keywords new or changed in
# 2019-09/2020-12 ($defs, prefixItems, unevaluated*, dependent*, $ref with siblings...), float
# multipleOf (the two disagree on 0.3 / 0.1), patternProperties (fastjsonschema's anchors are
# stricter, so a key could escape its pattern's schema), and not / oneOf / if (they would turn a
# stricter subschema into a laxer verdict).
_FAST_VALUE_KEYWORDS = frozenset(
    [
        "type",
        "required",
        "enum",
        "const",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "format",
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
    ]
)
_FAST_SCHEMA_KEYWORDS = frozenset(("additionalProperties", "propertyNames", "items", "contains"))
_FAST_SCHEMA_LIST_KEYWORDS = frozenset(("allOf", "anyOf"))
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"


def _fast_compatible(schema: Any) -> bool:
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict):
        return False
    for keyword, value in schema.items():
        if keyword in _FAST_VALUE_KEYWORDS:
            continue
        if keyword == "properties":
            ok = isinstance(value, dict) and all(_fast_compatible(sub) for sub in value.values())
        elif keyword in _FAST_SCHEMA_KEYWORDS:
            ok = _fast_compatible(value)  # `items` as a list (a tuple form) is refused here
        elif keyword in _FAST_SCHEMA_LIST_KEYWORDS:
            ok = isinstance(value, list) and all(_fast_compatible(sub) for sub in value)
        else:
            ok = False
        if not ok:
            return False
    return True


def compile_fast_check(schema: dict[str, Any]) -> Callable[[Any], bool] | None:
    """A compiled check that says quickly that a context is valid, or None when the schema uses
    keywords it cannot be trusted with.

    jsonschema walks a schema for every context (about 13 us for the demo's version 2 contract);
    fastjsonschema compiles it to Python once (0.5 us). Its "valid" is trusted only for schemas
    built from the keywords above, where it can only be stricter than jsonschema; anything it
    rejects goes to jsonschema, which decides and words the errors. Formats are annotations in
    2020-12, so neither asserts them; defaults are never written into the context.
    """
    schema = dict(schema)
    if schema.pop("$schema", DRAFT_2020_12) != DRAFT_2020_12 or not _fast_compatible(schema):
        return None
    try:
        check = fastjsonschema.compile(schema, use_default=False, use_formats=False)
    except Exception:  # e.g. a pattern Python's re rejects: jsonschema alone judges such a schema
        return None

    def accepts(context: Any) -> bool:
        try:
            check(context)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    return accepts


NO_CONTRACT = Contract()
# Far deeper than a context needs, and far from Python's recursion limit, which the JSON encoders (and the
# dashboard's indented rendering) would otherwise hit with a 500.
MAX_DEPTH = 100


def check_json_object(context: Any, max_bytes: int) -> str:
    """Return the JSON text of a context, or raise ValueError saying why it cannot be stored (and where)."""
    if not isinstance(context, dict):
        raise ValueError(f"context must be a JSON object (a dict), got {type(context).__name__}")
    problem = _structure_problem(context)  # first: json.dumps recurses as deep as the context goes
    if problem:
        raise ValueError(problem)
    try:
        text = json.dumps(context, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"context is not JSON-serialisable: {exc}") from None
    # json.dumps escapes every surrogate as \udXXX: only then is a string worth a look.
    if "\\ud" in text:
        where = locate_text(context, has_lone_surrogate)
        if where:
            raise ValueError(f"context holds a lone UTF-16 surrogate {where}, which PostgreSQL cannot store")
    if len(text.encode()) > max_bytes:
        raise ValueError(f"context is {len(text.encode())} bytes, over the limit of {max_bytes} bytes")
    return text


_SURROGATE = re.compile("[\ud800-\udfff]")


def has_surrogate(text: str) -> bool:
    """Any surrogate code point, paired or not: a name holding one is two code points in Python but
    one character once stored as JSON, and no driver sends it as text."""
    return _SURROGATE.search(text) is not None


def has_lone_surrogate(text: str) -> bool:
    """A surrogate code point not paired with its partner: no UTF-8 (hence no PostgreSQL text or JSON)
    can hold it. A high and low surrogate side by side are one character to JSON, and are stored as one."""
    if not has_surrogate(text):
        return False
    try:
        text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    except UnicodeDecodeError:
        return True
    return False


def storable_text(text: str) -> str:
    """`text` with what a PostgreSQL text column refuses (NUL, lone surrogates) written as escapes, for
    messages that quote an author's exception."""
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode() if has_lone_surrogate(text) else text


def _path_words(path: tuple[Any, ...]) -> str:
    words = "/".join(storable_text(str(part)) for part in path) or "(root)"
    return words if len(words) <= 200 else words[:100] + "/.../" + words[-95:]


def locate_text(context: dict[str, Any], bad: Callable[[str], bool]) -> str:
    """Where the first string (key or value) for which `bad` holds sits in the context, in words
    ("at notes/0/text", "in the key 'a\\ud800' at notes"); "" when there is none. Iterative: any depth."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(context, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if bad(value):
                return f"at {_path_words(path)}"
        elif isinstance(value, dict):
            for key in value:
                if isinstance(key, str) and bad(key):
                    return f"in the key {storable_text(repr(key)[:60])} at {_path_words(path)}"
            stack.extend((child, (*path, key)) for key, child in reversed(value.items()))
        elif isinstance(value, list | tuple):
            stack.extend((child, (*path, index)) for index, child in reversed(list(enumerate(value))))
    return ""


def _has_nul(text: str) -> bool:
    return "\x00" in text


def _structure_problem(context: dict[str, Any]) -> str:
    """Walk the context without recursion: nesting deeper than MAX_DEPTH, or a NUL character."""
    stack: list[tuple[Any, int]] = [(context, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return (
                    f"context contains a NUL character (\\u0000) {locate_text(context, _has_nul)}, "
                    "which PostgreSQL's JSON cannot store"
                )
        elif isinstance(value, dict | list | tuple):
            if depth > MAX_DEPTH:
                return f"context is nested more than {MAX_DEPTH} levels deep"
            children = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
    return ""
