"""The code registry of this process: the workflows defined in the modules named by WORKFLOWS_MODULES."""

from __future__ import annotations

import importlib
import threading

from django.conf import settings

from workflows_admin.engine import Registry, WorkflowDef

_lock = threading.Lock()
_registry: Registry | None = None


def load_registry(modules: list[str]) -> Registry:
    """Import each module and register every Workflow defined at its top level."""
    registry = Registry()
    for module_name in modules:
        module = importlib.import_module(module_name)
        for value in vars(module).values():
            if isinstance(value, WorkflowDef):
                registry.register(value)
    return registry


def get_registry() -> Registry:
    global _registry
    if _registry is None:
        with _lock:
            if _registry is None:
                _registry = load_registry(settings.WORKFLOWS_MODULES)
    return _registry


def migration_path_problem(workflow: str, source: str, target: str) -> str:
    """Why this deployment's code cannot migrate `workflow` from `source` to `target`, or "" if it can."""
    from workflows_admin.engine.planning import PlanningError, plan_migration

    registry = get_registry()
    if workflow not in registry:
        return f"workflow '{workflow}' has no code in this deployment"
    try:
        plan_migration(registry.get(workflow), source, target)
    except PlanningError as exc:
        return str(exc)
    return ""
