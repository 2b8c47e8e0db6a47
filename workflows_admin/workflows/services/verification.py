"""Know what a deploy will do before it does it: the version diff with its live impact, and the
verification of a migration on a stratified sample of the live population. Reads only.

The sampler's cost does not grow with the table. The strata (source version x current step x status)
come from the trigger-kept counters, a few hundred rows; each stratum is split by age bucket and each
(stratum, bucket) is one small query on the (version, status, created_at) index, limited to its quota
and to a scan cap, so at most strata x buckets x cap index entries are read whatever the table holds.
Databases without the counters (the SQLite demo, a copy without the triggers) find the strata with a
GROUP BY over the in-flight instances of the source versions instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.backends.utils import CursorWrapper
from django.db.models import Count, Sum
from django.utils import timezone

from workflows_admin.engine import PlanningError, WorkflowDef, plan_migration
from workflows_admin.engine.diff import diff_versions
from workflows_admin.engine.verification import (
    AGE_BUCKETS,
    Sample,
    Stratum,
    VerificationReport,
    verify_samples,
)

from .. import counters
from ..models import IN_FLIGHT_STATUSES, InstanceCount, Workflow, WorkflowInstance, WorkflowVersion
from ..runtime import get_registry
from . import audit
from .audit import Actor
from .errors import Conflict, InvalidInput, NotFound
from .numbers import parse_whole_number
from .reasons import parse_reason

DEFAULT_SAMPLE = 1000
DEFAULT_PER_STRATUM = 5
MAX_SAMPLE = 100_000
SCAN_CAP_MIN = 1000  # index entries a probe may read before it gives up on its stratum's age bucket
INSTANCES = WorkflowInstance._meta.db_table
COUNTS = InstanceCount._meta.db_table
VERSIONS = WorkflowVersion._meta.db_table
WORKFLOWS = Workflow._meta.db_table
IN_FLIGHT = [str(status) for status in IN_FLIGHT_STATUSES]

# (version label, version id, step, status, population)
type StratumRow = tuple[str, int, str, str, int]


def _workflow_definition(workflow: str) -> WorkflowDef:
    registry = get_registry()
    if workflow not in registry:
        raise NotFound(f"workflow '{workflow}' has no code in this deployment", field="workflow")
    return registry.get(workflow)


def _version_row(workflow: str, label: str, field: str) -> WorkflowVersion:
    row = WorkflowVersion.objects.select_related("workflow").filter(workflow__name=workflow, version=label).first()
    if row is None:
        raise NotFound(f"workflow '{workflow}' has no version {label!r}", field=field)
    return row


# --- the version diff ------------------------------------------------------------------------------
def version_diff(workflow: str, *, source: str, target: str) -> dict[str, Any]:
    """The engine's diff of two versions, with the in-flight instances on each affected step of the source
    now (from the counters) and a sentence for each: "31 instances sit on `enrich`, which 3.0.0 removes;
    the step map sends them to `summarize`"."""
    definition = _workflow_definition(workflow)
    try:
        diff = diff_versions(definition, source, target)
    except (KeyError, ValueError) as exc:
        raise InvalidInput(str(exc).strip("'\""), field="version") from None
    result = diff.as_dict()
    row = WorkflowVersion.objects.filter(workflow__name=workflow, version=diff.source).first()
    on_step = in_flight_by_step(row) if row else {}
    result["in_flight"] = sum(on_step.values())
    for step in result["affected_steps"]:
        step["in_flight"] = on_step.get(step["step"], 0)
        step["sentence"] = _affected_sentence(step, diff.target)
    return result


def _affected_sentence(step: dict[str, Any], target: str) -> str:
    n = step["in_flight"]
    what = {"removed": "removes", "renamed": "renames", "reordered": "reorders", "remapped": "maps elsewhere"}
    sits = f"{n} instance{'s' if n != 1 else ''} sit{'s' if n == 1 else ''} on `{step['step']}`"
    where = (
        f"the step map sends them to `{step['destination']}`"
        if step["destination"]
        else "no migration path says where they go"
    )
    return f"{sits}, which {target} {what.get(step['change'], 'changes')}; {where}"


def in_flight_by_step(version: WorkflowVersion) -> dict[str, int]:
    """{step: in-flight instances} of a version: counter rows on PostgreSQL, a GROUP BY elsewhere."""
    if counters.maintained(connection):
        counted = InstanceCount.objects.filter(version=version, status__in=IN_FLIGHT_STATUSES)
        grouped = list(counted.order_by().values_list("current_step").annotate(total=Sum("n")))
    else:
        rows = WorkflowInstance.objects.filter(version=version, status__in=IN_FLIGHT_STATUSES)
        grouped = list(rows.order_by().values_list("current_step").annotate(total=Count("id")))
    return {step: total for step, total in grouped if total}


# --- the stratified sampler ------------------------------------------------------------------------
def _in(values: list[str]) -> str:
    """Placeholders for an IN list: portable to SQLite (the demo) as well as PostgreSQL."""
    return "(" + ", ".join(["%s"] * len(values)) + ")"


def strata_from_counters(cursor: CursorWrapper, workflow: str, sources: list[str]) -> list[StratumRow]:
    """The in-flight strata of the source versions, from the counter rows (one small query)."""
    cursor.execute(
        f"""
        SELECT v.version, v.id, c.current_step, c.status, sum(c.n)
        FROM {COUNTS} c JOIN {VERSIONS} v ON v.id = c.version_id
        JOIN {WORKFLOWS} w ON w.id = v.workflow_id
        WHERE w.name = %s AND v.version IN {_in(sources)} AND c.status IN {_in(IN_FLIGHT)}
        GROUP BY 1, 2, 3, 4 HAVING sum(c.n) > 0
        """,
        [workflow, *sources, *IN_FLIGHT],
    )
    return [(label, pk, step, status, int(n)) for label, pk, step, status, n in cursor.fetchall()]


def strata_by_grouping(cursor: CursorWrapper, workflow: str, sources: list[str]) -> list[StratumRow]:
    """The same strata counted from the instances, for a database without the counter table."""
    cursor.execute(
        f"""
        SELECT v.version, v.id, i.current_step, i.status, count(*)
        FROM {INSTANCES} i JOIN {VERSIONS} v ON v.id = i.version_id
        JOIN {WORKFLOWS} w ON w.id = v.workflow_id
        WHERE w.name = %s AND v.version IN {_in(sources)} AND i.status IN {_in(IN_FLIGHT)}
        GROUP BY 1, 2, 3, 4
        """,
        [workflow, *sources, *IN_FLIGHT],
    )
    return [(label, pk, step, status, int(n)) for label, pk, step, status, n in cursor.fetchall()]


def _quotas(rows: list[StratumRow], limit: int, per_stratum: int) -> list[tuple[StratumRow, int]]:
    """(stratum, quota over its age buckets): `per_stratum` for each bucket and the rest of `limit` shared
    in proportion to the strata's populations, never more than `limit` in all. When that does not fit,
    each stratum gets an equal share, the most populous first."""
    ordered = sorted(rows, key=lambda r: (-r[4], r[0], r[2], r[3]))
    if not ordered:
        return []
    buckets = len(AGE_BUCKETS)
    floor = len(ordered) * buckets * per_stratum
    if floor <= limit:
        total = sum(row[4] for row in ordered) or 1
        return [(row, buckets * per_stratum + (limit - floor) * row[4] // total) for row in ordered]
    share, rest = divmod(limit, len(ordered))
    return [(row, share + (1 if position < rest else 0)) for position, row in enumerate(ordered)]


def _range(now: datetime, bucket: int, adapt: Callable[[datetime], Any]) -> tuple[str, list[Any]]:
    """The SQL condition and parameters of an age bucket on created_at (the index's third column)."""
    _label, younger, older = AGE_BUCKETS[bucket]
    if older is None:
        return "created_at < %s", [adapt(now - younger)]
    return "created_at >= %s AND created_at < %s", [adapt(now - older), adapt(now - younger)]


class _Probe:
    """One (stratum, age bucket): its index range, and what was taken from it so far."""

    def __init__(self, row: StratumRow, bucket: int, now: datetime, adapt: Callable[[datetime], Any]):
        self.row = row
        label, _version_id, step, status, population = row
        self.stratum = Stratum(label, step, status, AGE_BUCKETS[bucket][0], population)
        self.ages, self.age_params = _range(now, bucket, adapt)
        self.taken: list[Sample] = []
        self.exhausted = False

    def take(self, cursor: CursorWrapper, quota: int) -> int:
        """Up to `quota` more instances, newest first: the inner query walks the index range of (version,
        status, age bucket) and stops after a scan cap of entries, the outer keeps the stratum's step."""
        label, version_id, step, status, _population = self.row
        offset = len(self.taken)
        cap = max(SCAN_CAP_MIN, 50 * (offset + quota))
        cursor.execute(
            f"""
            SELECT id, context FROM (
                SELECT id, context, current_step FROM {INSTANCES}
                WHERE version_id = %s AND status = %s AND {self.ages}
                ORDER BY created_at DESC LIMIT %s
            ) AS ranged WHERE current_step = %s LIMIT %s OFFSET %s
            """,
            [version_id, status, *self.age_params, cap, step, quota, offset],
        )
        found = cursor.fetchall()
        for pk, context in found:
            self.taken.append(Sample(pk, label, step, status, self.stratum.age, _json_value(context)))
        if len(found) < quota:
            self.exhausted = True
            # Short of its quota: the bucket's end, or the cap (there may be more beyond it)?
            self.stratum.capped = _bucket_holds(cursor, version_id, status, self.ages, self.age_params, cap)
        return len(found)


def sample_instances(
    cursor: CursorWrapper,
    workflow: str,
    sources: list[str],
    *,
    limit: int,
    per_stratum: int,
    counted: bool,
    now: datetime | None = None,
    adapt: Callable[[datetime], Any] = lambda value: value,
) -> tuple[list[Stratum], list[Sample]]:
    """A stratified sample of the in-flight instances of `sources` over `cursor` (Django's or a psycopg
    one: the same SQL): every source version x current step x status x age bucket gets its share, at
    most `limit` in all. Each probe is one query on the (version, status, created_at) index, bounded by
    its quota and by a scan cap: the cost depends on the strata, not on the table's size. A stratum's
    quota left by its empty age buckets goes, in a second probe, to the buckets that had more. `adapt`
    turns a datetime into the driver's parameter (Django's SQLite backend stores text)."""
    now = now or timezone.now()
    rows = (strata_from_counters if counted else strata_by_grouping)(cursor, workflow, sources)
    probes: list[_Probe] = []
    for row, quota in _quotas(rows, limit, per_stratum):
        mine = [_Probe(row, bucket, now, adapt) for bucket in range(len(AGE_BUCKETS))]
        probes += mine
        share, left = max(1, quota // len(mine)), quota
        for probe in mine:
            if left <= 0:
                break
            left -= probe.take(cursor, min(share, left))
        more = [probe for probe in reversed(mine) if probe.taken and not probe.exhausted]  # oldest first
        for position, probe in enumerate(more):
            if left <= 0:
                break
            left -= probe.take(cursor, -(-left // (len(more) - position)))
    kept = [probe for probe in probes if probe.taken or probe.stratum.capped]
    return [probe.stratum for probe in kept], [sample for probe in kept for sample in probe.taken]


def _bucket_holds(
    cursor: CursorWrapper, version_id: int, status: str, ages: str, age_params: list[Any], cap: int
) -> bool:
    """Whether an age bucket of (version, status) holds `cap` entries or more: counted on the index, up
    to the cap (asked only for a probe that came back short of its quota)."""
    cursor.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM {INSTANCES} WHERE version_id = %s AND status = %s AND {ages} "
        "LIMIT %s) AS scanned",
        [version_id, status, *age_params, cap],
    )
    return int(cursor.fetchone()[0]) >= cap


# --- verification ----------------------------------------------------------------------------------
def plans_to(definition: WorkflowDef, target: str, sources: Iterable[str]) -> dict[str, Any]:
    """{source: (forward plan, back plan or None)} for the sources with a path to `target`."""
    plans = {}
    for source in sources:
        try:
            forward = plan_migration(definition, source, target)
        except PlanningError:
            continue
        try:
            back = plan_migration(definition, target, source)
        except PlanningError:
            back = None
        plans[source] = (forward, back)
    return plans


def parse_options(sample: Any, per_stratum: Any) -> tuple[int, int]:
    limit = parse_whole_number(
        DEFAULT_SAMPLE if sample in (None, "") else sample, "sample", minimum=1, maximum=MAX_SAMPLE
    )
    each = parse_whole_number(
        DEFAULT_PER_STRATUM if per_stratum in (None, "") else per_stratum, "per_stratum", minimum=1, maximum=limit
    )
    return limit, each


def verify(
    workflow: str,
    target: str,
    *,
    sample: Any = None,
    per_stratum: Any = None,
    sources: list[str] | None = None,
    now: datetime | None = None,
) -> VerificationReport:
    """Verify the migrations into `target` on a stratified sample of the instances in flight on the other
    versions (or on `sources`): forward with the target contract, and the round trip where a path back
    exists. Versions with no path to the target are listed with their in-flight counts, not failed."""
    definition = _workflow_definition(workflow)
    target_row = _version_row(workflow, target, "version")
    if target_row.parsed not in definition.versions:
        raise InvalidInput(f"{target_row} has no code in this deployment", field="version")
    limit, each = parse_options(sample, per_stratum)
    if sources:
        for label in sources:
            _version_row(workflow, label, "from")
        if target_row.version in sources:
            raise InvalidInput(f"{target} is the target: choose other source versions", field="from")
        candidates = list(dict.fromkeys(sources))
    else:
        candidates = list(
            WorkflowVersion.objects.filter(workflow=target_row.workflow)
            .exclude(pk=target_row.pk)
            .values_list("version", flat=True)
        )
    with_code = [label for label in candidates if _has_code(definition, label)]
    plans = plans_to(definition, target_row.version, with_code)
    report = VerificationReport(workflow, target_row.version, sample_limit=limit, per_stratum=each)
    report.paths = {
        source: {"forward": forward.path, "back": back.path if back else None}
        for source, (forward, back) in plans.items()
    }
    counts = _in_flight_by_version(target_row.workflow_id)
    for label in candidates:
        if label not in plans and counts.get(label):
            report.unreachable[label] = counts[label]
    if plans:
        with connection.cursor() as cursor:
            strata, samples = sample_instances(
                cursor,
                workflow,
                sorted(plans),
                limit=limit,
                per_stratum=each,
                counted=counters.maintained(connection),
                now=now,
                adapt=connection.ops.adapt_datetimefield_value,
            )
        report.strata = strata
        verify_samples(report, plans, samples)
    return report


def _has_code(definition: WorkflowDef, label: str) -> bool:
    try:
        definition.get_version(label)
    except (KeyError, ValueError):
        return False
    return True


def _json_value(value: Any) -> dict[str, Any]:
    """A context as the cursor returned it: psycopg decodes jsonb; SQLite gives text."""
    decoded: dict[str, Any] = json.loads(value) if isinstance(value, str) else value
    return decoded


def _in_flight_by_version(workflow_id: int) -> dict[str, int]:
    from ..selectors import status_counts_by_version

    labels = dict(WorkflowVersion.objects.filter(workflow_id=workflow_id).values_list("pk", "version"))
    counts = status_counts_by_version([workflow_id])
    in_flight = {pk: sum(by_status.get(s, 0) for s in IN_FLIGHT_STATUSES) for pk, by_status in counts.items()}
    return {labels[pk]: n for pk, n in in_flight.items() if pk in labels}


# --- the rollout gate ------------------------------------------------------------------------------
class VerificationFailed(Conflict):
    """A rollout refused because the verification of its target failed; `report` is the whole report."""

    def __init__(self, report: dict[str, Any]):
        super().__init__(
            f"verification of {report['target']} failed: {report['summary']}; fix the migration, or skip the "
            "verification with a reason",
            field="verification",
        )
        self.report = report


def skip_reason(raw: Any) -> str | None:
    """None: verify. A reason: skip it (audited). Given but blank: refused, a skip needs its why."""
    if raw is None:
        return None
    return parse_reason(
        raw, field="skip_verification", needed="skipping the verification needs a reason, for the audit log"
    )


def gate_rollout(workflow: str, target: str, *, skip: str | None, sample: Any = None) -> dict[str, Any]:
    """What a rollout start runs first: the verification of `target`, whose report it returns, or raises
    VerificationFailed with; with a reason to skip it, {"skipped": True, "reason"} (the caller audits it)."""
    if skip is not None:
        return {"skipped": True, "reason": skip}
    report = verify(workflow, target, sample=sample).as_dict()
    if not report["ok"]:
        raise VerificationFailed(report)
    return {"skipped": False, **report}


def record_refusal(version: WorkflowVersion, report: dict[str, Any], actor: Actor) -> None:
    failures = [
        {"cause": g["cause"], "count": g["count"], "instances": [e["instance"] for e in g["examples"]]}
        for g in report["failures"]
    ]
    audit.record(
        "rollout.refused",
        actor=actor,
        workflow_id=version.workflow_id,
        version=version,
        message=f"rollout of {version} refused: verification failed: {report['summary']}",
        details={"summary": report["summary"], "failures": failures},
    )
