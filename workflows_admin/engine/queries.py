"""A small query language over an instance's context, for selecting the instances a batch moves.

One clause, in one of four forms (values are JSON literals, so strings are quoted):

    model_config.style = "shout"     equality at a path
    has sources                      presence of a path (a JSON null counts as present)
    sources contains ["a", "b"]      JSONB containment at a path (``@>`` is a synonym)
    {"model_config": {"style": "x"}} containment of the whole context

A path is keys separated by dots; a key that is not a plain name (letters, digits, ``_``, ``-``,
not starting with a digit) is written as a JSON string: ``"odd key".x``. Parsing produces a
`ContextQuery` (plain data); the database layer compiles it to bound parameters, never to SQL text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .contracts import has_lone_surrogate, locate_text

MAX_CLAUSE_CHARS = 2000
MAX_PATH_KEYS = 20
OPERATIONS = ("eq", "has", "contains")
_WORDS = ("has", "contains")  # quoted when they are keys, so a canonical clause parses back the same

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_DECODER = json.JSONDecoder(parse_constant=lambda word: _refuse_constant(word))


class QueryError(ValueError):
    """A clause that is not in the grammar; the message says where and what was expected."""


def _refuse_constant(word: str) -> Any:
    raise QueryError(f"{word} is not a JSON value PostgreSQL can store")


@dataclass(frozen=True)
class ContextQuery:
    op: str  # one of OPERATIONS
    path: tuple[str, ...]
    value: Any = None

    def nested(self) -> Any:
        """The value wrapped in objects along the path: what `context @> ...` tests."""
        value = self.value
        for key in reversed(self.path):
            value = {key: value}
        return value

    def text(self) -> str:
        """The clause written canonically: parsing it gives this query back."""
        path = ".".join(key if _NAME.fullmatch(key) and key not in _WORDS else json.dumps(key) for key in self.path)
        if self.op == "has":
            return f"has {path}"
        value = json.dumps(self.value, ensure_ascii=False, sort_keys=True)
        if self.op == "eq":
            return f"{path} = {value}"
        return f"{path} contains {value}" if path else value


def parse_query(text: Any) -> ContextQuery:
    """One clause as a ContextQuery; QueryError (a ValueError) saying what is wrong otherwise."""
    if not isinstance(text, str):
        raise QueryError(f"a context query is text such as 'model_config.style = \"shout\"', got {text!r}")
    if len(text) > MAX_CLAUSE_CHARS:
        raise QueryError(f"a context query is at most {MAX_CLAUSE_CHARS} characters, got {len(text)}")
    if _unstorable(text):
        raise QueryError("a context query cannot hold a NUL character or a lone UTF-16 surrogate")
    body = text.strip()
    if not body:
        raise QueryError('a context query is empty; write e.g. model_config.style = "shout" or has sources')
    if body.startswith("{"):
        value = _whole_value(body, 0, "the whole-context containment")
        if not isinstance(value, dict):
            raise QueryError("a clause starting with { must be one JSON object, contained in the context")
        return ContextQuery("contains", (), value)
    presence = re.match(r"has\s+", body)
    if presence:
        path, end = _path(body, presence.end())
        if body[end:].strip():
            raise QueryError(f"unexpected {body[end:].strip()[:40]!r} after 'has {body[3:end].strip()}'")
        return ContextQuery("has", path)
    path, end = _path(body, 0)
    rest = body[end:]
    operator = re.match(r"\s*(=|@>)\s*|\s+(contains)\s*", rest)
    if operator is None:
        raise QueryError(
            f"after the path {body[:end]!r} expected =, contains or @>, then a JSON value"
            + (f"; got {rest.strip()[:40]!r}" if rest.strip() else "")
        )
    word = operator.group(1) or operator.group(2)
    value = _whole_value(body, end + operator.end(), f"the value after {word}")
    return ContextQuery("eq" if word == "=" else "contains", path, value)


def _path(body: str, start: int) -> tuple[tuple[str, ...], int]:
    keys: list[str] = []
    at = start
    while True:
        if body.startswith('"', at):
            try:
                key, at = _DECODER.raw_decode(body, at)
            except ValueError as exc:
                raise QueryError(f"a quoted key at character {at + 1} is not a JSON string: {exc}") from None
        else:
            name = _NAME.match(body, at)
            if name is None:
                got = body[at : at + 20] or "the end"
                raise QueryError(
                    f'expected a key at character {at + 1} (a name like model_config, or a quoted "key"), '
                    f'got {got!r}; string values are quoted: style = "shout"'
                )
            key, at = name.group(), name.end()
        if _unstorable(key):
            raise QueryError("a key cannot hold a NUL character or a lone UTF-16 surrogate")
        keys.append(key)
        if len(keys) > MAX_PATH_KEYS:
            raise QueryError(f"a path has at most {MAX_PATH_KEYS} keys")
        if not body.startswith(".", at):
            return tuple(keys), at
        at += 1


def _whole_value(body: str, start: int, what: str) -> Any:
    if start >= len(body):
        raise QueryError(f'{what} is missing: write a JSON value, e.g. "shout", 3, true, null or ["a"]')
    try:
        value, end = _DECODER.raw_decode(body, start)
    except QueryError:
        raise
    except RecursionError:
        raise QueryError(f"{what} is nested too deeply") from None
    except ValueError as exc:
        hint = ' (strings are quoted: "shout")' if _NAME.match(body, start) else ""
        raise QueryError(f"{what} is not a JSON value{hint}: {exc}") from None
    if body[end:].strip():
        raise QueryError(f"unexpected {body[end:].strip()[:40]!r} after {what}")
    # PostgreSQL's jsonb refuses these: the query would fail in the database instead of here.
    if locate_text({"value": value}, _unstorable):
        raise QueryError(f"{what} holds a NUL character or a lone UTF-16 surrogate, which no context can hold")
    return value


def _unstorable(text: str) -> bool:
    return "\x00" in text or has_lone_surrogate(text)
