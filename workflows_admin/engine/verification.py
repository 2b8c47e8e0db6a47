"""Verification of a migration on sampled instances: forward along the path, back again where a path
back exists (the round trip must restore the context exactly), the target contract checked on the way.

Pure Python: the samples come from the caller (the stratified sampler reads them from the database).
Failures are grouped by cause, never by value, each group with a few example instances and their diffs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .planning import MigrationFailed, MigrationPlan, diff_contexts

# Age buckets by start time, youngest first: (label, lower bound of the age, upper bound or None).
AGE_BUCKETS: tuple[tuple[str, timedelta, timedelta | None], ...] = (
    ("<1h", timedelta(0), timedelta(hours=1)),
    ("1h-1d", timedelta(hours=1), timedelta(days=1)),
    ("1d-7d", timedelta(days=1), timedelta(days=7)),
    (">=7d", timedelta(days=7), None),
)
EXAMPLES_PER_GROUP = 3


@dataclass(frozen=True)
class Sample:
    instance_id: Any
    source: str  # the instance's version
    step: str
    status: str
    age: str  # an AGE_BUCKETS label
    context: dict[str, Any]

    @property
    def stratum(self) -> tuple[str, str, str, str]:
        return (self.source, self.step, self.status, self.age)


def canonical(context: Any) -> str:
    """A context as JSON text with sorted keys: equal texts are the same stored value (1 and 1.0, or True
    and 1, are not taken for each other, as Python's == would)."""
    return json.dumps(context, sort_keys=True, ensure_ascii=False, allow_nan=False)


def exact_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """diff_contexts, with values compared as stored (canonical JSON), not by Python's ==."""
    diff = diff_contexts(before, after)
    diff["changed"] = {
        key: {"before": before[key], "after": after[key]}
        for key in before.keys() & after.keys()
        if canonical(before[key]) != canonical(after[key])
    }
    return diff


@dataclass
class Outcome:
    """One sample's result: None `cause` is a pass."""

    cause: str | None = None
    message: str = ""
    diff: dict[str, Any] | None = None
    step: str | None = None  # where the instance continues on the target
    result: dict[str, Any] | None = None  # the migrated context


def check_sample(forward: MigrationPlan, back: MigrationPlan | None, context: dict[str, Any], step: str) -> Outcome:
    """Run `context` (at `step`) forward, checking the target contract, then back if `back` is given: the
    context that comes back must be the one that went out, exactly."""
    try:
        migrated, new_step = forward.apply(context, step or None)
    except MigrationFailed as failure:
        return Outcome(f"forward: {failure.kind}", failure.message)
    if back is None:
        return Outcome(step=new_step, result=migrated)
    try:
        restored, _back_step = back.apply(migrated, new_step)
    except MigrationFailed as failure:
        return Outcome(
            f"round trip: {failure.kind}",
            f"back along {' -> '.join(back.path)}: {failure.message}",
            diff_contexts(context, migrated),
            new_step,
            migrated,
        )
    if canonical(restored) != canonical(context):
        return Outcome(
            f"round trip {' -> '.join(forward.path)} -> {' -> '.join(back.path[1:])}: context not restored",
            "the context that came back differs from the original",
            exact_diff(context, restored),
            new_step,
            migrated,
        )
    return Outcome(step=new_step, result=migrated)


@dataclass
class Stratum:
    source: str
    step: str
    status: str
    age: str
    population: int | None = None  # in flight at (source, step, status), all ages: from the counters
    sampled: int = 0
    failed: int = 0
    capped: bool = False  # the probe's scan limit was reached before it found its quota

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "step": self.step,
            "status": self.status,
            "age": self.age,
            "population": self.population,
            "sampled": self.sampled,
            "failed": self.failed,
            "capped": self.capped,
        }


@dataclass
class VerificationReport:
    workflow: str
    target: str
    paths: dict[str, dict[str, list[str] | None]] = field(default_factory=dict)  # source -> forward/back
    strata: list[Stratum] = field(default_factory=list)
    unreachable: dict[str, int] = field(default_factory=dict)  # source without a path -> in flight
    checked: int = 0
    passed: int = 0
    failed: int = 0
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    sample_limit: int = 0
    per_stratum: int = 0

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def summary(self) -> str:
        sources = ", ".join(sorted(self.paths)) or "none"
        if not self.checked:
            text = f"nothing in flight to verify against {self.target} (sources with a path: {sources})"
        else:
            strata = sum(1 for s in self.strata if s.sampled)
            text = (
                f"{self.checked} instance(s) in {strata} {'stratum' if strata == 1 else 'strata'} from {sources}: "
                f"{self.passed} passed, "
                f"{self.failed} failed" + (f" in {len(self.groups)} group(s)" if self.groups else "")
            )
        if self.unreachable:
            text += "; no path to " + self.target + " from " + ", ".join(sorted(self.unreachable))
        return text

    def add(self, sample: Sample, outcome: Outcome, stratum: Stratum) -> None:
        self.checked += 1
        if outcome.cause is None:
            self.passed += 1
            return
        self.failed += 1
        stratum.failed += 1
        group = self.groups.setdefault(
            outcome.cause, {"cause": outcome.cause, "count": 0, "strata": [], "examples": []}
        )
        group["count"] += 1
        label = "/".join(sample.stratum)
        if label not in group["strata"]:
            group["strata"].append(label)
        if len(group["examples"]) < EXAMPLES_PER_GROUP:
            group["examples"].append(
                {
                    "instance": sample.instance_id,
                    "source": sample.source,
                    "step": sample.step,
                    "status": sample.status,
                    "age": sample.age,
                    "message": outcome.message,
                    "diff": outcome.diff,
                }
            )

    def as_dict(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "target": self.target,
            "ok": self.ok,
            "summary": self.summary(),
            "sample_limit": self.sample_limit,
            "per_stratum": self.per_stratum,
            "checked": self.checked,
            "passed": self.passed,
            "failed": self.failed,
            "paths": self.paths,
            "unreachable": self.unreachable,
            "failures": sorted(self.groups.values(), key=lambda g: (-g["count"], g["cause"])),
            "strata": [s.as_dict() for s in self.strata],
        }


def verify_samples(
    report: VerificationReport,
    plans: dict[str, tuple[MigrationPlan, MigrationPlan | None]],
    samples: Iterable[Sample],
) -> VerificationReport:
    """Check every sample with its source's (forward, back) plans, into `report`'s strata and groups."""
    strata = {(s.source, s.step, s.status, s.age): s for s in report.strata}
    for sample in samples:
        stratum = strata.get(sample.stratum)
        if stratum is None:
            stratum = strata[sample.stratum] = Stratum(*sample.stratum)
            report.strata.append(stratum)
        stratum.sampled += 1
        forward, back = plans[sample.source]
        report.add(sample, check_sample(forward, back, sample.context, sample.step), stratum)
    return report
