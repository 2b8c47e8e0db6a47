"""A pytest helper for workflow authors: prove a migration on real shapes of data before shipping it.

from workflows_admin.testing import check_migration

def test_upgrade_to_2_1():
    check = check_migration("research-agent", "1.0.0", "2.1.0", [{"topic": "t", "raw_text": "x"}])
    assert check.diffs[0]["added"]["sources"] == []

@pytest.mark.django_db
def test_upgrade_on_live_shapes():
    check_migration("research-agent", "1.0.0", "2.1.0", from_database=500)  # a sample of live contexts
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workflows_admin.engine import MigrationFailed, WorkflowDef, plan_migration
from workflows_admin.engine.planning import diff_contexts


@dataclass
class MigrationCheck:
    path: list[str]
    checked: int = 0
    diffs: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)


def check_migration(
    workflow: str | WorkflowDef,
    source: str,
    target: str,
    contexts: list[dict[str, Any]] | None = None,
    *,
    step: str | None = None,
    from_database: int | None = None,
) -> MigrationCheck:
    """Run the migration path on each context and validate against the target contract.

    Contexts come from the argument, or (`from_database=N`) from the N newest in-flight instances of
    the source version. Raises AssertionError listing every failure; returns the diffs otherwise.
    """
    if isinstance(workflow, str):
        from workflows_admin.workflows.runtime import get_registry

        workflow = get_registry().get(workflow)
    plan = plan_migration(workflow, source, target)
    samples: list[tuple[Any, dict[str, Any], str | None]] = [
        (position, context, step) for position, context in enumerate(contexts or [])
    ]
    if from_database:
        from workflows_admin.workflows.models import IN_FLIGHT_STATUSES, WorkflowInstance

        rows = (
            WorkflowInstance.objects.filter(
                workflow__name=workflow.name, version__version=str(plan.source), status__in=IN_FLIGHT_STATUSES
            )
            .order_by("-pk")
            .values_list("pk", "context", "current_step")[:from_database]
        )
        samples += [(f"#{pk}", context, current or None) for pk, context, current in rows]
    if not samples:
        raise AssertionError("no context to check: pass contexts or from_database=N with live instances")
    check = MigrationCheck(path=plan.path)
    failures = []
    for label, context, at_step in samples:
        try:
            migrated, new_step = plan.apply(context, at_step)
        except MigrationFailed as failure:
            failures.append(f"{label}: {failure.message}")
            continue
        diff = diff_contexts(context, migrated)
        check.diffs.append(diff)
        check.results.append({"sample": label, "context": migrated, "step": new_step})
    check.checked = len(samples)
    if failures:
        raise AssertionError(
            f"migration {' -> '.join(plan.path)} fails for {len(failures)} of {len(samples)} context(s):\n"
            + "\n".join(failures)
        )
    return check
