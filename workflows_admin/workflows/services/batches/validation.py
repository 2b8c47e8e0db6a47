"""What a batch request may ask for: the selection filter, the chunk size and the pacing, each
checked and normalised here, with an InvalidInput naming the field for anything else."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from ...models import IN_FLIGHT_STATUSES, InstanceStatus, MigrationBatch, WorkflowInstance, WorkflowVersion
from ..errors import InvalidInput
from ..numbers import parse_id, parse_whole_number

SELECTION_KEYS = ("statuses", "started_after", "started_before", "ids")
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
            moment = timezone.make_aware(moment, timezone.UTC) if timezone.is_naive(moment) else moment
            moment = moment.astimezone(timezone.UTC)
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
        raise InvalidInput(
            "selection must be an object with statuses, started_after, started_before, ids", field="selection"
        )
    unknown = sorted(set(raw) - set(SELECTION_KEYS))
    if unknown:
        raise InvalidInput(
            f"unknown selection field(s): {', '.join(map(str, unknown))}; use {', '.join(SELECTION_KEYS)}",
            field="selection",
        )
    selection: dict[str, Any] = {}
    statuses = raw.get("statuses") or [str(s) for s in IN_FLIGHT_STATUSES]
    if isinstance(statuses, str):
        statuses = [s.strip() for s in statuses.split(",")]  # an empty part ("waiting,,running") is refused below
    if not isinstance(statuses, list) or not all(s in MIGRATABLE_STATUSES for s in statuses):
        allowed = ", ".join(MIGRATABLE_STATUSES)
        raise InvalidInput(f"statuses must be a list of: {allowed} (got {statuses!r})", field="statuses")
    selection["statuses"] = sorted(set(statuses))
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
    return selection


def selected_instances(source: WorkflowVersion | int, selection: dict[str, Any]):
    instances = WorkflowInstance.objects.filter(version=source, status__in=selection["statuses"])
    if "started_after" in selection:
        instances = instances.filter(created_at__gte=parse_datetime(selection["started_after"]))
    if "started_before" in selection:
        instances = instances.filter(created_at__lt=parse_datetime(selection["started_before"]))
    if "ids" in selection:
        instances = instances.filter(pk__in=selection["ids"])
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
    def parse(cls, raw: dict | None) -> Pacing:
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
