"""The migrate wizard's parts: the step graph with the mapping override, the selection by query read
from the form, and the live count the form asks for as the operator types (htmx partials). Every
part also works without JavaScript: the wizard page renders them, and a GET re-renders it for
another target."""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from workflows_admin.workflows.models import WorkflowVersion
from workflows_admin.workflows.services.batches.commands import resolve
from workflows_admin.workflows.services.errors import ServiceError
from workflows_admin.workflows.wizard_selectors import count_selection, step_graph

from . import step_graph as drawing
from .http import version_or_404

MAP_PREFIX = "map."  # the form's select per source step: map.<source step> = target step


def selection_from(data) -> dict:
    """The selection fields of the wizard form (a QueryDict), as the services take them."""
    where = [line.strip() for line in data.get("where", "").splitlines() if line.strip()]
    return {
        "statuses": data.getlist("statuses"),
        "started_after": data.get("started_after", ""),
        "started_before": data.get("started_before", ""),
        "ids": data.get("ids", ""),
        "step": data.get("step", ""),
        "where": where,
        "error": data.get("error", ""),
    }


def step_map_from(data) -> dict[str, str]:
    return {key[len(MAP_PREFIX) :]: value for key, value in data.items() if key.startswith(MAP_PREFIX) and value}


def graph_context(version: WorkflowVersion, target_label: str, step_map: dict | None = None) -> dict:
    """The step graph from `version` to `target_label` (with the override), the mapping choices (a
    select per source step, offering the target's steps only), and the error if no plan can be made."""
    if not target_label:
        return {
            "graph": drawing.layout(step_graph(source=version, target=None, plan=None)),
            "mapping": [],
            "graph_error": None,
        }
    try:
        resolved = resolve(version.workflow.name, source=version.version, target=target_label, step_map=step_map)
    except ServiceError as error:
        if step_map and error.field == "step_map":  # the graph still shows the migrations' own map
            return {**graph_context(version, target_label), "graph_error": error}
        return {
            "graph": drawing.layout(step_graph(source=version, target=None, plan=None)),
            "mapping": [],
            "graph_error": error,
        }
    plan = resolved.plan
    target_steps = [step["name"] for step in resolved.target.steps]
    mapping = [
        {
            "step": step,
            "field": f"{MAP_PREFIX}{step}",
            "chosen": plan.step_map[step],
            "default": step not in plan.step_map_override,
            "options": target_steps,
        }
        for step in plan.step_map
    ]
    graph = drawing.layout(step_graph(source=version, target=resolved.target, plan=plan))
    return {"graph": graph, "mapping": mapping, "graph_error": None, "graph_target": target_label}


@require_GET
def migrate_mapping(request, pk: int) -> HttpResponse:
    """The graph and mapping selects for the target chosen in the wizard (swapped in on change)."""
    version = version_or_404(pk)
    context = graph_context(version, request.GET.get("target", ""), step_map_from(request.GET))
    return render(request, "dashboard/migrate.html#mapping", {"version": version, **context})


def count_context(version: WorkflowVersion, data) -> dict:
    """The count partial's context: how many match now, or the error naming the field."""
    try:
        return {"count": count_selection(version, selection_from(data)), "count_error": None}
    except ServiceError as error:
        return {"count": None, "count_error": error}


@require_GET
def migrate_count(request, pk: int) -> HttpResponse:
    """How many instances the wizard's selection matches now; a bad field is named instead (400)."""
    version = version_or_404(pk)
    context = count_context(version, request.GET)
    status = context["count_error"].status_code if context["count_error"] else 200
    return render(request, "dashboard/migrate.html#count", {"version": version, **context}, status=status)
