"""What changes between two versions of a workflow, and how much each change matters.

Pure Python. A version's *shape* is what its instances rely on: its steps in order (with their step
versions), its contract and the patch markers its code checks. `diff_shapes` lists the changes between
two shapes, each classified:

- compatible: an instance moved across keeps what it relies on (a step renamed through the step map,
  a new step version behind the same step, a contract loosened);
- additive: something new that existing instances need not have (a step added, an optional field,
  a patch marker checked);
- breaking: something an in-flight instance relies on goes or gets stricter (a step removed or
  reordered, a required field added, a stricter type, a patch marker no longer checked, a changed model).

The whole diff is as bad as its worst change. `diff_versions` adds the migration paths both ways and the
steps whose instances are affected, with where the step map sends them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .planning import MigrationPlan, PlanningError, plan_migration
from .registry import VersionDef, WorkflowDef
from .versions import Version

COMPATIBLE, ADDITIVE, BREAKING = "compatible", "additive", "breaking"
_RANK = {COMPATIBLE: 0, ADDITIVE: 1, BREAKING: 2}
# What sync watches on a registered label: the step list and the contract (step versions and patch
# markers change under one label by design).
SHAPE_KINDS = frozenset(("step_added", "step_removed", "step_renamed", "steps_reordered", "contract"))


@dataclass(frozen=True)
class Change:
    kind: str  # step_added, step_removed, step_renamed, steps_reordered, step_version, contract, patch
    subject: str  # the step, field or patch it is about
    detail: str  # in words
    classification: str

    def as_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "detail": self.detail,
            "classification": self.classification,
        }


@dataclass(frozen=True)
class AffectedStep:
    """A step of the source version whose instances a move changes: `destination` is where the step map
    sends them (None: nowhere, there is no path)."""

    step: str
    change: str  # removed, renamed, reordered
    destination: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "change": self.change, "destination": self.destination}


def worst(classifications: Iterable[str]) -> str:
    return max(classifications, key=_RANK.__getitem__, default=COMPATIBLE)


def version_shape(definition: VersionDef) -> dict[str, Any]:
    """A version's shape as JSON-able data: what the registry sync stores and compares."""
    return {
        "steps": [{"name": step.name, "step_version": step.step_version} for step in definition.steps],
        "contract": definition.contract.describe(),
        "patches": list(definition.patches),
    }


def _types(schema: Any) -> set[str] | None:
    if not isinstance(schema, dict) or "type" not in schema:
        return None
    value = schema["type"]
    return {str(t) for t in value} if isinstance(value, list) else {str(value)}


def _keyword_changes(where: str, old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Keywords of one (sub)schema: a type narrowed or any constraint added or changed is breaking (a
    context valid before may be refused now), one removed or a type widened is compatible."""
    changes = []
    old_types, new_types = _types(old), _types(new)
    if old_types != new_types:
        if new_types is None or (old_types is not None and old_types < new_types):
            changes.append(Change("contract", where, f"{where}: type widened to {_words(new_types)}", COMPATIBLE))
        else:
            changes.append(
                Change("contract", where, f"{where}: type {_words(old_types)} -> {_words(new_types)}", BREAKING)
            )
    for keyword in sorted((old.keys() | new.keys()) - {"type", "properties", "required", "$schema"}):
        if keyword in ("title", "description", "examples", "$comment", "default"):
            continue  # annotations: nothing is refused because of them
        if keyword not in new:
            changes.append(Change("contract", where, f"{where}: {keyword} dropped", COMPATIBLE))
        elif old.get(keyword) != new[keyword]:
            what = "added" if keyword not in old else "changed"
            changes.append(Change("contract", where, f"{where}: {keyword} {what} ({new[keyword]!r})", BREAKING))
    return changes


def _words(types: set[str] | None) -> str:
    return " or ".join(sorted(types)) if types else "any"


def _contract_changes(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    changes = []
    old_schema, new_schema = old.get("schema") or {}, new.get("schema") or {}
    old_required = set(old.get("required", ())) | set(old_schema.get("required", ()))
    new_required = set(new.get("required", ())) | set(new_schema.get("required", ()))
    for name in sorted(new_required - old_required):
        changes.append(Change("contract", name, f"required field '{name}' added", BREAKING))
    for name in sorted(old_required - new_required):
        changes.append(Change("contract", name, f"required field '{name}' no longer required", COMPATIBLE))
    old_props, new_props = old_schema.get("properties", {}), new_schema.get("properties", {})
    closed = new_schema.get("additionalProperties") is False
    for name in sorted(new_props.keys() - old_props.keys()):
        if name not in new_required:
            changes.append(Change("contract", name, f"optional field '{name}' added", ADDITIVE))
    for name in sorted(old_props.keys() - new_props.keys()):
        # With additionalProperties false, a field no longer described is a field now refused.
        changes.append(
            Change("contract", name, f"field '{name}' no longer described", BREAKING if closed else COMPATIBLE)
        )
    for name in sorted(old_props.keys() & new_props.keys()):
        if old_props[name] != new_props[name]:
            changes += _keyword_changes(name, old_props[name] or {}, new_props[name] or {})
    if old_schema != new_schema:
        changes += _keyword_changes("(root)", old_schema, new_schema)
    if old.get("model") != new.get("model"):
        # A model's rules cannot be read from here: assume the worst.
        changes.append(Change("contract", "model", f"model {old.get('model')} -> {new.get('model')}", BREAKING))
    return changes


def diff_shapes(old: dict[str, Any], new: dict[str, Any], step_map: dict[str, str] | None = None) -> list[Change]:
    """The changes from shape `old` to shape `new`. `step_map` (old step -> new step, from a migration
    path) tells a rename from a removal: a step that is gone and mapped to a step the old shape did
    not have was renamed."""
    old_steps = [s["name"] for s in old.get("steps", [])]
    new_steps = [s["name"] for s in new.get("steps", [])]
    old_versions = {s["name"]: s.get("step_version", "") for s in old.get("steps", [])}
    new_versions = {s["name"]: s.get("step_version", "") for s in new.get("steps", [])}
    step_map = step_map or {}
    changes: list[Change] = []
    renamed: dict[str, str] = {}
    for name in old_steps:
        if name in new_steps:
            continue
        destination = step_map.get(name)
        if destination and destination not in old_steps and destination not in renamed.values():
            renamed[name] = destination
            changes.append(Change("step_renamed", name, f"step '{name}' renamed to '{destination}'", COMPATIBLE))
        elif destination:
            detail = f"step '{name}' removed; the step map sends it to '{destination}'"
            changes.append(Change("step_removed", name, detail, BREAKING))
        else:
            changes.append(Change("step_removed", name, f"step '{name}' removed", BREAKING))
    for name in new_steps:
        if name not in old_steps and name not in renamed.values():
            changes.append(Change("step_added", name, f"step '{name}' added", ADDITIVE))
    # Order of the steps both have (a renamed step under its new name): one out of place is breaking,
    # an instance there would run steps it has run, or skip some.
    common_old = [renamed.get(name, name) for name in old_steps if name in new_steps or name in renamed]
    common_new = [name for name in new_steps if name in common_old]
    if common_old != common_new:
        moved = [name for name, other in zip(common_old, common_new, strict=True) if name != other]
        changes.append(
            Change(
                "steps_reordered",
                ", ".join(moved),
                f"steps reordered: {' -> '.join(common_old)} became {' -> '.join(common_new)}",
                BREAKING,
            )
        )
    for name in old_steps:
        new_name = renamed.get(name, name)
        if new_name in new_versions and old_versions[name] != new_versions[new_name]:
            before, after = old_versions[name] or "unversioned", new_versions[new_name] or "unversioned"
            changes.append(Change("step_version", new_name, f"step '{new_name}' {before} -> {after}", COMPATIBLE))
    changes += _contract_changes(old.get("contract", {}), new.get("contract", {}))
    old_patches, new_patches = set(old.get("patches", ())), set(new.get("patches", ()))
    for name in sorted(new_patches - old_patches):
        changes.append(Change("patch", name, f"patch marker '{name}' checked", ADDITIVE))
    for name in sorted(old_patches - new_patches):
        changes.append(Change("patch", name, f"patch marker '{name}' no longer checked", BREAKING))
    return changes


def shape_changes(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """The changes registry sync flags on one label: steps added, removed or reordered, contract changed."""
    return [change for change in diff_shapes(old, new) if change.kind in SHAPE_KINDS]


@dataclass
class VersionDiff:
    workflow: str
    source: str
    target: str
    changes: list[Change] = field(default_factory=list)
    forward_path: list[str] | None = None
    back_path: list[str] | None = None
    step_map: dict[str, str] = field(default_factory=dict)
    affected_steps: list[AffectedStep] = field(default_factory=list)
    # What each hop of the forward path does to a context (None: a function's hop, which says nothing).
    operations: dict[str, list[str] | None] = field(default_factory=dict)

    @property
    def classification(self) -> str:
        return worst(change.classification for change in self.changes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "source": self.source,
            "target": self.target,
            "classification": self.classification,
            "changes": [change.as_dict() for change in self.changes],
            "paths": {"forward": self.forward_path, "back": self.back_path},
            "step_map": self.step_map,
            "operations": self.operations,
            "affected_steps": [step.as_dict() for step in self.affected_steps],
        }


def _plan(workflow: WorkflowDef, source: Version, target: Version) -> MigrationPlan | None:
    try:
        return plan_migration(workflow, source, target)
    except PlanningError:
        return None


def diff_versions(workflow: WorkflowDef, source: str | Version, target: str | Version) -> VersionDiff:
    """Every change from `source` to `target`, the migration paths both ways, and the source steps whose
    instances a move affects. Raises KeyError naming an unknown version, ValueError for the same one twice."""
    old_def, new_def = workflow.get_version(source), workflow.get_version(target)
    if old_def.version == new_def.version:
        raise ValueError(f"source and target are both {old_def.version}: choose two different versions")
    forward_plan = _plan(workflow, old_def.version, new_def.version)
    back_plan = _plan(workflow, new_def.version, old_def.version)
    forward = forward_plan.path if forward_plan else None
    diff = VersionDiff(
        workflow.name,
        old_def.label,
        new_def.label,
        forward_path=forward,
        back_path=back_plan.path if back_plan else None,
    )
    step_map = diff.step_map = forward_plan.step_map if forward_plan else {}
    diff.operations = forward_plan.describe()["operations"] if forward_plan else {}
    diff.changes = diff_shapes(version_shape(old_def), version_shape(new_def), step_map)
    reordered = {name for c in diff.changes if c.kind == "steps_reordered" for name in c.subject.split(", ")}
    for step in old_def.step_names:
        destination = step_map.get(step)
        if step not in new_def.step_names:
            renamed = any(c.kind == "step_renamed" and c.subject == step for c in diff.changes)
            diff.affected_steps.append(AffectedStep(step, "renamed" if renamed else "removed", destination))
        elif step in reordered or (destination is not None and destination != step):
            change = "reordered" if step in reordered else "remapped"
            diff.affected_steps.append(AffectedStep(step, change, destination))
    if forward is None:
        diff.changes.append(
            Change("path", f"{old_def.label}->{new_def.label}", "no migration path: instances cannot move", BREAKING)
        )
    return diff
