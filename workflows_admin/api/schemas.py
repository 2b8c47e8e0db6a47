"""Request and response shapes, as the OpenAPI schema publishes them. Dates are ISO 8601.

Numbers are JSON integers (strict: "50" is refused); their ranges are the services' to check, with
the same parser as the dashboard and the CLI.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ninja import Schema
from pydantic import ConfigDict, Field, StrictBool, StrictInt, StrictStr


class Input(Schema):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is named, not ignored


class Problem(Schema):
    type: str
    title: str
    status: int
    detail: str
    field: str | None = None
    errors: list[dict[str, str]] | None = None


# --- workflows and versions ---------------------------------------------------------------------
class VerdictOut(Schema):
    allowed: bool
    reason: str


class VersionOut(Schema):
    workflow: str
    version: str
    state: str
    has_code: bool
    code_missing_since: datetime | None
    counts: dict[str, int]
    in_flight: int
    oldest_in_flight: datetime | None
    drained_at: datetime | None
    retired_at: datetime | None
    registered_at: datetime
    steps: list[dict[str, Any]]
    actions: dict[str, VerdictOut] | None = None


class WorkflowOut(Schema):
    name: str
    description: str
    current_version: str | None
    ramp_percent: int
    versions: list[VersionOut]


class WorkflowPage(Schema):
    items: list[WorkflowOut]
    next_cursor: str | None


class RampIn(Input):
    percent: StrictInt


class SelectionIn(Input):
    statuses: list[StrictStr] | None = None
    started_after: StrictStr | None = None
    started_before: StrictStr | None = None
    ids: list[StrictInt] | None = None
    step: list[StrictStr] | None = None
    where: list[StrictStr] | None = None
    error: StrictStr | None = None


class PreviewIn(Input):
    target: StrictStr
    selection: SelectionIn | None = None
    # Where instances at a source step resume on the target, over the versions' step map.
    step_map: dict[StrictStr, StrictStr] | None = None


class PreviewOut(Schema):
    selection_token: str
    selected: int
    report: dict[str, Any]


class PacingIn(Input):
    not_before: StrictStr | None = None
    rate_limit: StrictInt | None = None
    canary_size: StrictInt | None = None
    canary_max_failure_rate: float | None = None
    max_wait: StrictInt | None = None
    on_max_wait: StrictStr | None = None


class ConfirmIn(Input):
    target: StrictStr
    # Never empty: a confirmation without its preview's token would migrate every matching instance.
    selection_token: StrictStr = Field(min_length=1)
    pacing: PacingIn | None = None
    chunk_size: StrictInt = 500


# --- batches ------------------------------------------------------------------------------------
class BatchItemOut(Schema):
    instance_id: int
    state: str
    error: str


class BatchOut(Schema):
    id: int
    kind: str
    state: str
    workflow: str
    source_version: str | None
    target_version: str | None
    parent_id: int | None
    total: int
    succeeded: int
    failed: int
    skipped: int
    conflicts: int
    deferred: int
    processed: int
    percent: float
    finished: bool
    rate_per_second: float | None
    eta_seconds: int | None
    scheduled_for: datetime | None
    started_by: str
    force: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    actions: dict[str, VerdictOut] | None = None
    failures: list[BatchItemOut] | None = None


class BatchPage(Schema):
    items: list[BatchOut]
    next_cursor: str | None


class RollbackIn(Input):
    force: StrictBool = False
    reopen_finished: StrictBool = False


# --- rollouts -----------------------------------------------------------------------------------
class RolloutEventOut(Schema):
    at: datetime
    decision: str
    percent: int
    message: str
    figures: list[dict[str, Any]]


class RolloutOut(Schema):
    id: int
    workflow: str
    target_version: str
    previous_version: str
    strategy: str
    state: str
    percent: int
    on_breach: str
    gates: list[dict[str, Any]]
    interval_seconds: int
    halted_reason: str
    started_at: datetime
    finished_at: datetime | None
    events: list[RolloutEventOut] | None = None


class RolloutPage(Schema):
    items: list[RolloutOut]
    next_cursor: str | None


class RolloutIn(Input):
    workflow: StrictStr
    version: StrictStr
    strategy: StrictStr = "linear"
    gates: list[StrictStr] = Field(default_factory=list)
    step_percent: StrictInt = 10
    canary_percent: StrictInt = 10
    interval_seconds: StrictInt = 600
    on_breach: StrictStr = "keep"


# --- instances ----------------------------------------------------------------------------------
class InstanceOut(Schema):
    id: int
    workflow: str
    version: str
    status: str
    current_step: str
    status_reason: str
    context: dict[str, Any] | None = None
    start_key: str
    revision: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class InstancePage(Schema):
    items: list[InstanceOut]
    next_cursor: str | None


class StartIn(Input):
    workflow: StrictStr
    context: dict[str, Any]
    version: StrictStr | None = None
    start_key: StrictStr = ""


class BulkStartIn(Input):
    workflow: StrictStr
    contexts: list[dict[str, Any]] = Field(max_length=10_000)
    start_keys: list[StrictStr] | None = None
    version: StrictStr | None = None


class InstanceList(Schema):
    items: list[InstanceOut]


class SignalIn(Input):
    payload: dict[str, Any]


# --- audit --------------------------------------------------------------------------------------
class AuditEventOut(Schema):
    id: int
    created_at: datetime
    action: str
    actor: str
    workflow: str | None
    version: str | None
    instance_id: int | None
    batch_id: int | None
    message: str
    details: dict[str, Any]


class AuditPage(Schema):
    items: list[AuditEventOut]
    next_cursor: str | None


# --- webhooks -----------------------------------------------------------------------------------
class WebhookOut(Schema):
    id: int
    url: str
    events: list[str]
    active: bool
    description: str
    created_at: datetime
    secret: str | None = None  # only in the answer that created it


class WebhookPage(Schema):
    items: list[WebhookOut]
    next_cursor: str | None


class WebhookIn(Input):
    url: StrictStr
    events: list[StrictStr]
    secret: StrictStr | None = None
    active: StrictBool = True
    description: StrictStr = ""


class WebhookPatch(Input):
    url: StrictStr | None = None
    events: list[StrictStr] | None = None
    secret: StrictStr | None = None
    active: StrictBool | None = None
    description: StrictStr | None = None


class DeliveryOut(Schema):
    id: int
    event: str
    state: str
    attempts: int
    last_status_code: int | None
    last_error: str
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any]


class DeliveryPage(Schema):
    items: list[DeliveryOut]
    next_cursor: str | None


# --- what a deploy will do ----------------------------------------------------------------------
class AcknowledgeShapeIn(Input):
    reason: StrictStr


class ChangeOut(Schema):
    kind: str
    subject: str
    detail: str
    classification: str


class AffectedStepOut(Schema):
    step: str
    change: str
    destination: str | None
    in_flight: int
    sentence: str


class DiffOut(Schema):
    workflow: str
    source: str
    target: str
    classification: str
    changes: list[ChangeOut]
    paths: dict[str, list[str] | None]
    step_map: dict[str, str]
    affected_steps: list[AffectedStepOut]
    in_flight: int


class VerificationOut(Schema):
    workflow: str
    target: str
    ok: bool
    summary: str
    sample_limit: int
    per_stratum: int
    checked: int
    passed: int
    failed: int
    paths: dict[str, dict[str, list[str] | None]]
    unreachable: dict[str, int]
    failures: list[dict[str, Any]]
    strata: list[dict[str, Any]]
