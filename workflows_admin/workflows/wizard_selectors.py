"""Reads for the migrate wizard and the version page: how many instances a selection matches (as the
operator types) and the two versions' steps with their in-flight counts and the step mapping."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import connection
from django.db.models import Sum

from workflows_admin.engine import MigrationPlan

from . import counters
from .models import InstanceCount, WorkflowVersion
from .selectors import in_flight_by_step
from .services.batches.validation import parse_selection, selected_instances

COUNTED_KEYS = {"statuses", "step"}  # what the trigger-kept counters know per (version, status, step)


def count_selection(source: WorkflowVersion, raw_selection: Any) -> int:
    """How many instances of `source` the selection matches now (InvalidInput for a bad one).

    Statuses and steps alone are read from the counters (the same cost at a million instances);
    anything else counts the matching rows through the indexes (see bench/selection.py)."""
    selection = parse_selection(raw_selection)
    if set(selection) <= COUNTED_KEYS and counters.maintained(connection):
        rows = InstanceCount.objects.filter(version=source, status__in=selection["statuses"])
        if "step" in selection:
            rows = rows.filter(current_step__in=selection["step"])
        return rows.aggregate(total=Sum("n"))["total"] or 0
    return selected_instances(source, selection).order_by().count()


@dataclass
class StepNode:
    name: str
    in_flight: int
    kind: str = "step"  # step | removed (no step of that name on the target) | unmapped | added


@dataclass
class StepGraph:
    """Both columns of the graph and the arrows between them (source step -> target step)."""

    source: WorkflowVersion
    target: WorkflowVersion | None
    source_steps: list[StepNode] = field(default_factory=list)
    target_steps: list[StepNode] = field(default_factory=list)
    arrows: list[tuple[str, str, int, bool]] = field(default_factory=list)  # from, to, instances, overridden


def step_graph(*, source: WorkflowVersion, target: WorkflowVersion | None, plan: MigrationPlan | None) -> StepGraph:
    """The source's steps (and any step its in-flight instances sit at that it does not have:
    unmapped), the target's, and the plan's mapping as arrows carrying the source step's count."""
    graph = StepGraph(source, target)
    at_source = in_flight_by_step(source)
    source_names = [step["name"] for step in source.steps]
    target_names = [step["name"] for step in target.steps] if target else []
    for name in source_names:
        removed = target is not None and name not in target_names
        graph.source_steps.append(StepNode(name, at_source.pop(name, 0), "removed" if removed else "step"))
    for name, count in sorted(at_source.items()):
        if count:  # instances at a step this version does not have: no mapping can place them
            graph.source_steps.append(StepNode(name or "(no step)", count, "unmapped"))
    if target is None:
        return graph
    at_target = in_flight_by_step(target)
    for name in target_names:
        graph.target_steps.append(StepNode(name, at_target.get(name, 0), "step" if name in source_names else "added"))
    if plan is not None:
        counts = {node.name: node.in_flight for node in graph.source_steps}
        for name in source_names:
            to = plan.step_map[name]
            graph.arrows.append((name, to, counts[name], name in plan.step_map_override))
    return graph
