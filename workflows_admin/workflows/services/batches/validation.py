"""What a batch request may ask for: the selection filter, the chunk size and the pacing, each
checked and normalised here, with an InvalidInput naming the field for anything else."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.contrib.postgres.fields import ArrayField
from django.db import connection
from django.db.models import F, Func, JSONField, Q, QuerySet, TextField, Value
from django.db.models.fields.json import HasKey, KeyTransform
from django.db.models.lookups import Exact, IsNull
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from workflows_admin.engine.contracts import has_lone_surrogate
from workflows_admin.engine.queries import ContextQuery, QueryError, parse_query

from ...models import IN_FLIGHT_STATUSES, InstanceStatus, MigrationBatch, WorkflowInstance, WorkflowVersion
from ..errors import InvalidInput
from ..numbers import parse_id, parse_whole_number

SELECTION_KEYS = ("statuses", "started_after", "started_before", "ids", "step", "where", "error")
MAX_STEP_NAME = 200  # WorkflowInstance.current_step
MAX_ERROR_TEXT = 500
MAX_WHERE_CLAUSES = 20
MIGRATABLE_STATUSES = (*IN_FLIGHT_STATUSES, InstanceStatus.FAILED)
MAX_CHUNK = 5000
PACING_KEYS = ("not_before", "rate_limit", "canary_size", "canary_max_failure_rate", "max_wait", "on_max_wait")
MAX_INT_COLUMN = 2**31 - 1  # PostgreSQL integer: rate_limit and canary_size are stored in one


def parse_moment(value: Any, field: str) -> datetime:
    """An ISO date-time as an aware datetime in UTC, or InvalidInput naming the field.

    Well-formed text can still name no moment (2026-02-30, an offset of 99 hours) or one that is
    outside what UTC and PostgreSQL hold (year 9999 at -23:59): refused here, never a crash later.
    """
    try:
        moment = value if isinstance(value, datetime) else parse_datetime(value) if isinstance(value, str) else None
        if moment is not None:
            moment = timezone.make_aware(moment, UTC) if timezone.is_naive(moment) else moment
            moment = moment.astimezone(UTC)
    except (ValueError, OverflowError):
        moment = None
    if moment is None:
        raise InvalidInput(f"{field} must be an ISO date-time such as 2026-11-24T12:00:00Z, got {value!r}", field=field)
    return moment


def parse_selection(raw: Any) -> dict[str, Any]:
    """Validate a selection filter; returns it normalised (JSON-able). Raises InvalidInput naming the field."""
    if raw in (None, ""):
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"selection must be an object with {', '.join(SELECTION_KEYS)}", field="selection")
    unknown = sorted(set(raw) - set(SELECTION_KEYS))
    if unknown:
        raise InvalidInput(
            f"unknown selection field(s): {', '.join(map(str, unknown))}; use {', '.join(SELECTION_KEYS)}",
            field="selection",
        )
    selection: dict[str, Any] = {}
    error = _text_filter(raw.get("error"), "error", MAX_ERROR_TEXT)
    # The error text is a failed instance's: without statuses, "error" selects failed instances.
    default_statuses = [InstanceStatus.FAILED] if error else [str(s) for s in IN_FLIGHT_STATUSES]
    statuses = raw.get("statuses")
    if statuses in (None, "", []):  # not given (a form's blank field): every in-flight status
        statuses = default_statuses
    if isinstance(statuses, str):
        statuses = [s.strip() for s in statuses.split(",")]  # an empty part ("waiting,,running") is refused below
    if not isinstance(statuses, list) or not all(s in MIGRATABLE_STATUSES for s in statuses):
        allowed = ", ".join(MIGRATABLE_STATUSES)
        raise InvalidInput(f"statuses must be a list of: {allowed} (got {statuses!r})", field="statuses")
    selection["statuses"] = sorted(set(statuses))
    if error:
        if InstanceStatus.FAILED not in selection["statuses"]:
            raise InvalidInput(
                "error matches the error text of failed instances: add failed to statuses", field="error"
            )
        selection["error"] = error
    for key in ("started_after", "started_before"):
        value = raw.get(key)
        if value in (None, ""):
            continue
        selection[key] = parse_moment(value, key).isoformat()
    ids = raw.get("ids")
    if ids not in (None, "", []):
        parts = ids.split(",") if isinstance(ids, str) else ids  # an empty part ("8,,9") is refused, not dropped
        if not isinstance(parts, list):
            raise InvalidInput(f"ids must be a list of instance numbers, got {ids!r}", field="ids")
        selection["ids"] = sorted({parse_id(part, "ids", label="every id in ids") for part in parts})
    steps = _text_list(raw.get("step"), "step", split=True)
    if steps:
        for step in steps:
            if len(step) > MAX_STEP_NAME:
                raise InvalidInput(f"step names are at most {MAX_STEP_NAME} characters", field="step")
        selection["step"] = sorted(set(steps))
    clauses = _text_list(raw.get("where"), "where", split=False)
    if clauses:
        if len(clauses) > MAX_WHERE_CLAUSES:
            raise InvalidInput(f"where takes at most {MAX_WHERE_CLAUSES} clauses", field="where")
        selection["where"] = [parse_where(clause).text() for clause in clauses]
    return selection


def _text_list(raw: Any, field: str, *, split: bool) -> list[str]:
    """A list of non-empty strings from a list (or one string; comma-separated when `split`)."""
    if raw in (None, "", []):
        return []
    parts = raw if isinstance(raw, list) else [raw]
    if split:
        parts = [piece.strip() for part in parts for piece in (part.split(",") if isinstance(part, str) else [part])]
    texts = [_text_filter(part, field, None) for part in parts]
    if not all(texts):
        raise InvalidInput(f"{field} has an empty entry; leave it out instead", field=field)
    return texts


def _text_filter(raw: Any, field: str, limit: int | None) -> str:
    if raw in (None, ""):
        return ""
    if not isinstance(raw, str):
        raise InvalidInput(f"{field} must be text, got {raw!r}", field=field)
    text = raw.strip()
    if "\x00" in text or has_lone_surrogate(text):
        raise InvalidInput(f"{field} cannot hold a NUL character or a lone UTF-16 surrogate", field=field)
    if limit is not None and len(text) > limit:
        raise InvalidInput(f"{field} is at most {limit} characters", field=field)
    return text


def parse_where(clause: Any) -> ContextQuery:
    try:
        return parse_query(clause)
    except QueryError as exc:
        raise InvalidInput(f"{clause!r}: {exc}"[:600], field="where") from None


def parse_step_map(raw: Any) -> dict[str, str]:
    """An operator's step-map override: {source step: target step}, or "source=target" texts (the
    CLI's repeatable --map); the plan checks the names against the versions' steps."""
    if raw in (None, "", [], {}):
        return {}
    if isinstance(raw, dict):
        pairs: list[tuple[Any, Any]] = list(raw.items())
    else:
        pairs = []
        for entry in raw if isinstance(raw, list) else [raw]:
            if not isinstance(entry, str) or entry.count("=") != 1:
                raise InvalidInput(f"step_map entries are source_step=target_step, got {entry!r}", field="step_map")
            source, target = entry.split("=")  # exactly one "=", checked above
            pairs.append((source.strip(), target.strip()))
    mapping: dict[str, str] = {}
    for source, target in pairs:
        if not isinstance(source, str) or not isinstance(target, str) or not source or not target:
            raise InvalidInput(
                f"step_map entries name a source step and a target step, got {source!r}={target!r}", field="step_map"
            )
        if mapping.get(source, target) != target:
            raise InvalidInput(f"step_map maps '{source}' twice ({mapping[source]}, {target})", field="step_map")
        mapping[source] = target
    return mapping


def _path_value(query: ContextQuery) -> Func:
    """`context #> path`: the value at the path (SQL NULL where it is absent), the path a bound text[]."""
    return Func(
        F("context"),
        Value(list(query.path), output_field=ArrayField(TextField())),
        function="",
        arg_joiner=" #> ",
        output_field=JSONField(),
    )


def context_condition(query: ContextQuery) -> Q | Exact | IsNull:
    """The ORM condition for one clause: containment (`@>`, which the GIN index on context serves) for
    equality and containment, the exact value at the path for equality (containment alone would let
    [1, 2] equal [1]), and `#> path IS NOT NULL` for presence."""
    if connection.vendor != "postgresql":
        return _sqlite_condition(query)
    if query.op == "has":
        return IsNull(_path_value(query), False)
    contained = Q(context__contains=query.nested())
    if query.op == "contains":
        return contained
    return contained & Q(Exact(_path_value(query), Value(query.value, output_field=JSONField())))


def _sqlite_condition(query: ContextQuery) -> Q:
    """The embedded demo's SQLite has JSON paths but no containment: equality and presence only."""
    if query.op == "contains":
        raise InvalidInput("containment needs PostgreSQL; on SQLite use = or has", field="where")
    *parents, last = query.path
    lhs: Any = F("context")
    for key in parents:
        lhs = KeyTransform(key, lhs)
    if query.op == "has":
        return Q(HasKey(lhs, last))
    if any("__" in key or key.isdigit() for key in query.path):
        raise InvalidInput("on SQLite a key cannot hold __ or be a number", field="where")
    # Django's own key lookup: it compares a JSON value as SQLite's JSON functions need.
    return Q(**{"__".join(("context", *query.path, "exact")): query.value})


def selected_instances(source: WorkflowVersion | int | None, selection: dict[str, Any]) -> QuerySet[WorkflowInstance]:
    instances = WorkflowInstance.objects.filter(version=source, status__in=selection["statuses"])
    if "started_after" in selection:
        instances = instances.filter(created_at__gte=parse_datetime(selection["started_after"]))
    if "started_before" in selection:
        instances = instances.filter(created_at__lt=parse_datetime(selection["started_before"]))
    if "ids" in selection:
        instances = instances.filter(pk__in=selection["ids"])
    if "step" in selection:
        instances = instances.filter(current_step__in=selection["step"])
    if "error" in selection:
        # Failed instances only: status_reason also says why one waits or is parked.
        instances = instances.filter(status=InstanceStatus.FAILED, status_reason__icontains=selection["error"])
    for clause in selection.get("where", ()):
        instances = instances.filter(context_condition(parse_query(clause)))
    return instances.order_by("pk")


def check_chunk_size(chunk_size: Any) -> int:
    return parse_whole_number(chunk_size, "chunk_size", minimum=1, maximum=MAX_CHUNK)


@dataclass
class Pacing:
    """When and how fast a batch runs: a scheduled start, a rate limit, a canary first chunk."""

    not_before: datetime | None = None
    rate_limit: int | None = None
    canary_size: int | None = None
    canary_max_failure_rate: float | None = None
    # How long a running step is waited for before its instance moves (None: until it ends), and
    # what happens then: skip (leave the instance) or interrupt (move it; its step's result is lost).
    max_wait: int | None = None
    on_max_wait: str = MigrationBatch.OnMaxWait.SKIP

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> Pacing:
        raw = {key: value for key, value in (raw or {}).items() if value not in (None, "")}
        unknown = sorted(set(raw) - {*PACING_KEYS})
        if unknown:
            raise InvalidInput(f"unknown pacing option(s): {', '.join(unknown)}", field="pacing")
        pacing = cls()
        if "not_before" in raw:
            pacing.not_before = parse_moment(raw["not_before"], "not_before")
        for key, least in (("rate_limit", 1), ("canary_size", 1), ("max_wait", 0)):
            if key in raw:
                setattr(pacing, key, parse_whole_number(raw[key], key, minimum=least, maximum=MAX_INT_COLUMN))
        if "on_max_wait" in raw:
            choices = MigrationBatch.OnMaxWait.values
            if raw["on_max_wait"] not in choices:
                raise InvalidInput(
                    f"on_max_wait must be one of {', '.join(choices)}, got {raw['on_max_wait']!r}", field="on_max_wait"
                )
            if pacing.max_wait is None:
                raise InvalidInput("on_max_wait needs max_wait (seconds)", field="max_wait")
            pacing.on_max_wait = raw["on_max_wait"]
        if "canary_max_failure_rate" in raw:
            try:
                share = float(raw["canary_max_failure_rate"])
            except (TypeError, ValueError):
                share = -1.0
            if not 0 <= share <= 1:
                raise InvalidInput(
                    "canary_max_failure_rate must be a share from 0 to 1 (0.05 = 5%), got "
                    f"{raw['canary_max_failure_rate']!r}",
                    field="canary_max_failure_rate",
                )
            if pacing.canary_size is None:
                raise InvalidInput("canary_max_failure_rate needs canary_size", field="canary_size")
            pacing.canary_max_failure_rate = share
        return pacing

    def apply(self, batch: MigrationBatch) -> None:
        batch.not_before = self.not_before
        batch.rate_limit = self.rate_limit
        batch.canary_size = self.canary_size
        batch.canary_max_failure_rate = self.canary_max_failure_rate
        batch.max_wait_seconds = self.max_wait
        batch.on_max_wait = self.on_max_wait
