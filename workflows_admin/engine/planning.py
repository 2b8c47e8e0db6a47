"""Migration paths between versions, their composed step mappings, and dry-runs of contexts."""

from __future__ import annotations

import json
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .contracts import has_lone_surrogate, locate_text, storable_text
from .operations import OperationFailed
from .registry import MigrationDef, WorkflowDef
from .versions import Version


class PlanningError(ValueError):
    """No plan can be made: same version, unknown version, or no path; the message says what to do."""


class StepMapError(PlanningError):
    """An operator's step-map override names a step the source or the target version does not have."""

    field = "step_map"


class MigrationFailed(Exception):
    """One context could not be migrated; `kind` groups failures in reports."""

    def __init__(self, kind: str, message: str):
        # The message quotes the author's exception, and is stored in a text column: no NUL or lone surrogate there.
        kind, message = storable_text(kind), storable_text(message)
        self.kind = kind
        self.message = message
        super().__init__(message)


# json.dumps writes a NUL character as \u0000 (a backslash it escapes itself comes out doubled).
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _json_text(value: Any, what: Callable[[], str]) -> str:
    """`value` as JSON text; `what()` names it in the error (only then: a label costs a microsecond)."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise MigrationFailed("not JSON", f"{what()} is not JSON-serialisable: {exc}") from None
    # PostgreSQL's jsonb refuses these: stored, they would fail the whole chunk's UPDATE, again and again.
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise MigrationFailed("not storable", f"{what()} contains a NUL character (\\u0000), which cannot be stored")
    if "\\ud" in text:  # json.dumps escapes every surrogate so: only then is a string worth a look
        where = locate_text(value, has_lone_surrogate)
        if where:
            raise MigrationFailed(
                "not storable", f"{what()} holds a lone UTF-16 surrogate {where}, which cannot be stored"
            )
    return text


def _context() -> str:
    return "context"


def _json_copy(value: Any) -> Any:
    return json.loads(_json_text(value, _context))


@dataclass
class MigrationPlan:
    workflow: WorkflowDef
    source: Version
    target: Version
    hops: list[MigrationDef]
    step_map: dict[str, str]
    # The operator's choices: source step -> target step, only where it differs from the migrations' map.
    step_map_override: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> list[str]:
        return [str(self.source), *(str(hop.target) for hop in self.hops)]

    def describe(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow.name,
            "source": str(self.source),
            "target": str(self.target),
            "path": self.path,
            "step_map": self.step_map,
            "step_map_override": self.step_map_override,
            # What each declared hop does to a context; None: a function, which says nothing of itself.
            "operations": {hop.label: hop.operations.describe() if hop.operations else None for hop in self.hops},
        }

    def apply(self, context: dict[str, Any], step: str | None) -> tuple[dict[str, Any], str | None]:
        """Run every hop on a copy of `context`, validate against the target contract.

        The input is never mutated. Raises MigrationFailed with a kind (migrator error, bad result,
        contract violation) so reports can group failures.
        """
        result, _text, new_step = self._run(_json_copy(context), step)
        return result, new_step

    def apply_json(self, context_json: str, step: str | None) -> tuple[str, str | None]:
        """`apply` for a stored context, as JSON text in and out: a batch parses each context once
        (that parse is the migrator's private copy) and serialises each result once, which is also
        the text it stores."""
        try:
            context = json.loads(context_json)
        except ValueError as exc:
            raise MigrationFailed("not JSON", f"context is not JSON: {exc}") from None
        _result, text, new_step = self._run(context, step)
        return text, new_step

    def _run(self, current: dict[str, Any], step: str | None) -> tuple[dict[str, Any], str, str | None]:
        """The hops on `current` (a private copy the migrators may mutate): the result, its JSON
        text, and the mapped step."""
        text = ""
        for hop in self.hops:
            try:
                result = hop.func(current)
            except OperationFailed as failed:  # a declared operation: its cause names it and the field
                what = f"migration {hop.label}: {failed.cause}"
                raise MigrationFailed(what, what) from None
            except Exception as exc:  # the author's code: any error fails this instance only
                raise MigrationFailed(
                    f"migrator {hop.label} raised {type(exc).__name__}",
                    f"migrator {hop.label} raised {type(exc).__name__}: {exc}",
                ) from exc
            if not isinstance(result, dict):
                raise MigrationFailed(
                    f"migrator {hop.label} returned {type(result).__name__}",
                    f"migrator {hop.label} returned {type(result).__name__}, expected a dict",
                )
            # Validated (and handed to the next hop) as it will be stored: tuples become lists, keys strings.
            text = _json_text(result, lambda: f"result of migrator {hop.label}")  # noqa: B023 (called at once)
            current = json.loads(text)
        target_def = self.workflow.versions[self.target]
        problems = target_def.contract.problems(current)
        if problems:
            # Grouped by cause (field and rule), never by value: one bug in a migrator is one group.
            raise MigrationFailed(
                f"contract of {self.target}: " + "; ".join(sorted({p.cause for p in problems})),
                f"result breaks the contract of {self.target}: " + "; ".join(p.message for p in problems),
            )
        text = text or _json_text(current, _context)  # no hop (never planned, but cheap to be right)
        return current, text, self.map_step(step)

    def map_step(self, step: str | None) -> str | None:
        """The target step an instance at `step` of the source resumes on (None: it has no step)."""
        if step is None:
            return None
        if step not in self.step_map:
            raise MigrationFailed(
                "unknown step", f"step '{step}' is not a step of {self.source}; the instance cannot be mapped"
            )
        return self.step_map[step]


def plan_migration(
    workflow: WorkflowDef,
    source: str | Version,
    target: str | Version,
    step_map: Mapping[str, str] | None = None,
) -> MigrationPlan:
    """The path from `source` to `target` and its composed step map; `step_map` overrides, per source
    step, the target step its instances resume on (only steps of the two versions are accepted)."""
    src, dst = Version.parse(source), Version.parse(target)
    for end, role in ((src, "source"), (dst, "target")):
        if end not in workflow.versions:
            known = ", ".join(str(v) for v in workflow.sorted_versions())
            raise PlanningError(f"{role} version {end} is not a version of '{workflow.name}' (known: {known})")
    if src == dst:
        raise PlanningError(f"source and target are both {src}: choose a different target version")
    hops = _shortest_path(workflow, src, dst)
    if hops is None:
        reachable = reachable_versions(workflow, src)
        can_reach = ", ".join(str(v) for v in reachable) if reachable else "no other version"
        raise PlanningError(
            f"no migration path from {src} to {dst} in '{workflow.name}'; from {src} you can reach: {can_reach}. "
            f"Register a migration with @workflow.migration(...) to connect them"
        )
    composed = {step: step for step in workflow.versions[src].step_names}
    for hop in hops:
        composed = {start: hop.step_map[now] for start, now in composed.items()}
    override = _checked_override(workflow, src, dst, composed, step_map or {})
    return MigrationPlan(workflow, src, dst, hops, {**composed, **override}, override)


def _checked_override(
    workflow: WorkflowDef, src: Version, dst: Version, composed: dict[str, str], step_map: Mapping[str, str]
) -> dict[str, str]:
    """The override's entries that change the composed map; StepMapError for a step either version lacks."""
    target_steps = workflow.versions[dst].step_names
    override = {}
    for from_step, to_step in step_map.items():
        if not isinstance(from_step, str) or not isinstance(to_step, str):
            raise StepMapError(f"step_map must map step names to step names, got {from_step!r}: {to_step!r}")
        if from_step not in composed:
            raise StepMapError(
                f"step_map names '{from_step}', which is not a step of {src} (steps: {', '.join(composed)})"
            )
        if to_step not in target_steps:
            raise StepMapError(
                f"step_map sends '{from_step}' to '{to_step}', which is not a step of {dst} "
                f"(steps: {', '.join(target_steps)})"
            )
        if composed[from_step] != to_step:
            override[from_step] = to_step
    return dict(sorted(override.items()))


def _edges(workflow: WorkflowDef) -> dict[Version, list[MigrationDef]]:
    edges: dict[Version, list[MigrationDef]] = {}
    for migration in workflow.migrations.values():
        edges.setdefault(migration.source, []).append(migration)
    for hops in edges.values():
        hops.sort(key=lambda m: m.target)
    return edges


def _shortest_path(workflow: WorkflowDef, src: Version, dst: Version) -> list[MigrationDef] | None:
    edges = _edges(workflow)
    came_from: dict[Version, MigrationDef | None] = {src: None}
    queue = deque([src])
    while queue:
        node = queue.popleft()
        if node == dst:
            path = []
            while (hop := came_from[node]) is not None:
                path.append(hop)
                node = hop.source
            return list(reversed(path))
        for hop in edges.get(node, []):
            if hop.target not in came_from:
                came_from[hop.target] = hop
                queue.append(hop.target)
    return None


def reachable_versions(workflow: WorkflowDef, src: Version) -> list[Version]:
    """Every version a migration path leads to from `src`, in version order."""
    return sorted(_reachable(workflow, src))


def _reachable(workflow: WorkflowDef, src: Version) -> set[Version]:
    edges = _edges(workflow)
    seen, stack = set(), [src]
    while stack:
        for hop in edges.get(stack.pop(), []):
            if hop.target not in seen and hop.target != src:
                seen.add(hop.target)
                stack.append(hop.target)
    return seen


def diff_contexts(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Top-level differences, enough for an operator to see what a migration does to one instance."""
    return {
        "added": {k: after[k] for k in after.keys() - before.keys()},
        "removed": {k: before[k] for k in before.keys() - after.keys()},
        "changed": {
            k: {"before": before[k], "after": after[k]} for k in before.keys() & after.keys() if before[k] != after[k]
        },
    }


@dataclass
class DryRunReport:
    plan: MigrationPlan
    examined: int = 0
    would_migrate: int = 0
    would_fail: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    # Per group: (instance id, the failure's own message, with the offending values) for a few instances.
    error_examples: dict[str, list[tuple[Any, str]]] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    step_moves: Counter[tuple[str | None, str | None]] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.describe(),
            "examined": self.examined,
            "would_migrate": self.would_migrate,
            "would_fail": self.would_fail,
            "errors": [
                {
                    "error": error,
                    "count": count,
                    "instances": [instance for instance, _message in self.error_examples.get(error, [])],
                    "examples": [
                        {"instance": instance, "message": message}
                        for instance, message in self.error_examples.get(error, [])
                    ],
                }
                for error, count in self.errors.most_common()
            ],
            "step_moves": [{"from": a, "to": b, "count": n} for (a, b), n in sorted(self.step_moves.items())],
            "examples": self.examples,
        }


def dry_run(
    plan: MigrationPlan,
    items: Iterable[tuple[Any, dict[str, Any], str | None]],
    *,
    examples: int = 3,
    failing_ids_per_error: int = 5,
) -> DryRunReport:
    """Apply `plan` in memory to (instance id, context, step) items; nothing is written anywhere."""
    report = DryRunReport(plan)
    for instance_id, context, step in items:
        report.examined += 1
        try:
            new_context, new_step = plan.apply(context, step)
        except MigrationFailed as failure:
            report.would_fail += 1
            report.errors[failure.kind] += 1
            examples_of_kind = report.error_examples.setdefault(failure.kind, [])
            if len(examples_of_kind) < failing_ids_per_error:
                examples_of_kind.append((instance_id, failure.message))
            continue
        report.would_migrate += 1
        report.step_moves[(step, new_step)] += 1
        if len(report.examples) < examples:
            report.examples.append(
                {"instance": instance_id, "step": [step, new_step], "diff": diff_contexts(context, new_context)}
            )
    return report
