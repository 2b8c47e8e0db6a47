"""An auto-upgrade at a step boundary in one statement: the common case of upgrades.upgrade_at_boundary.

The general path (the refused result write, then the safe point's transaction: row lock, result,
step run, the move decided as a chunk decides it, its item, counters, drained checks) costs about
19 round trips. Once this process knows a version's upgrade target and its running auto-upgrade
batch (learned from the general path, kept in `routes`), the migration path runs in Python on the
post-step context and one statement writes the result, the step run, the moved instance, its item
(the post-step snapshot) and the batch's counters, under the guards the general path keeps:
- the instance is written only at the claim's revision, still running, with no move waiting for
  it (a revision check; the UPDATE's row lock orders it against every other writer);
- only while its version still upgrades to that target and the batch still runs (the batch row
  taken FOR KEY SHARE, as a chunk takes it: a pause or cancel waits for the statement);
- only while the batch has no item for it (moved once and rolled back, or its migrator failed:
  recorded once, never tried again).
A migrator that fails: the step's result as the step left it, and a failed item. If a guard
fails nothing is written, and the caller takes the general path.

Drained: the statement also takes the source version FOR KEY SHARE (after the instance, before
the batch's counters: the order chunks and the safe point take them in), which a drained check
(FOR UPDATE) excludes, and the caller asks after the commit whether anything is left in flight there:
a check that locked the version before us has committed when we ask, one that locks it after us
sees our move. Only a draining version is asked; only an empty one is locked to be marked drained.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import connection
from psycopg.types.json import Jsonb

from workflows_admin.engine import MigrationFailed, MigrationPlan, PlanningError, WorkflowDef, plan_migration

from ..models import (
    BatchItem,
    InstanceStatus,
    MigrationBatch,
    StepRun,
    WorkflowInstance,
    WorkflowVersion,
)
from . import lifecycle
from .retries import retry_on_deadlock

if TYPE_CHECKING:  # steps imports this module
    from .steps import Claim


@dataclass(frozen=True)
class Route:
    """Where a version's instances upgrade to, and the running auto-upgrade batch that records it."""

    target_id: int
    target_label: str
    batch_id: int


# source version id -> its route, per process: set by the general path, dropped when a statement
# finds it out of date (a new target, a pinned version, a batch that ended).
routes: dict[int, Route] = {}
# (workflow definition's id, source, target) -> (the definition, its plan): a plan is pure code.
_plans: dict[tuple[int, str, str], tuple[WorkflowDef, MigrationPlan]] = {}

# What a boundary can move (as upgrade_at_boundary does); a failed step's boundary, rarer and
# terminal on its version, takes the general path.
MOVABLE = (InstanceStatus.PENDING, InstanceStatus.RUNNING, InstanceStatus.WAITING)
_JSON_FIELDS = {"context", "patches", "from_context"}


@dataclass
class Upgraded:
    """What the statement wrote: the instance's state now (moved or, its migrator failing, not)."""

    moved: bool
    version_id: int
    version_label: str
    step: str
    status: str
    revision: int
    context: dict[str, Any]


@dataclass
class PostStep:
    """The instance as its step leaves it, at rest: what the item keeps and the path migrates."""

    step: str
    status: str
    context: dict[str, Any]


def _plan(workflow_def: WorkflowDef, source: str, target: str) -> MigrationPlan | None:
    key = (id(workflow_def), source, target)
    cached = _plans.get(key)
    if cached is None or cached[0] is not workflow_def:
        try:
            cached = _plans[key] = (workflow_def, plan_migration(workflow_def, source, target))
        except PlanningError:
            return None  # no path in this process's code: the general path says why
    return cached[1]


def upgrade_with_result(claim: Claim, changes: dict[str, Any], step_run: StepRun, *, now: datetime) -> Upgraded | None:
    """Record the step's result and apply the version's auto-upgrade in one statement, if this
    process knows the route and every guard holds; None: nothing written, take the general path.
    A chained result (`changes` running, leased) stays chained: its next step is claimed on the target."""
    route = routes.get(claim.version_id)
    status = changes["status"]
    if route is None or status not in MOVABLE or connection.vendor != "postgresql":
        return None
    workflow_def = claim.definition.workflow
    plan = _plan(workflow_def, claim.version_label, route.target_label)
    if plan is None:
        return None
    post_step = PostStep(
        changes.get("current_step", claim.step),
        InstanceStatus.PENDING if status == InstanceStatus.RUNNING else status,
        changes.get("context", claim.context),
    )
    try:
        migrated, mapped = plan.apply(post_step.context, post_step.step)
    except MigrationFailed as failure:
        return _write(claim, route, changes, step_run, now, post_step, error=failure.message)
    resumed = InstanceStatus.WAITING if post_step.status == InstanceStatus.WAITING else InstanceStatus.PENDING
    chained = (
        status == InstanceStatus.RUNNING
        and resumed == InstanceStatus.PENDING
        and mapped in workflow_def.versions[plan.target].step_names
    )
    moved = {
        "version_id": route.target_id,
        "context": migrated,
        "current_step": mapped or "",
        "status": InstanceStatus.RUNNING if chained else resumed,
        # The step's result is one revision, the move the next, as on the general path.
        "revision": claim.revision + 2,
        "lease_expires_at": changes["lease_expires_at"] if chained else None,
        "updated_at": now,
        "attempt": 0,
        "status_reason": "",
        "finished_at": None,
        **({"patches": changes["patches"]} if "patches" in changes else {}),
    }
    return _write(claim, route, moved, step_run, now, post_step, error="")


@retry_on_deadlock()  # one statement in autocommit: a victim wrote nothing, and its guards are checked again
def _write(
    claim: Claim,
    route: Route,
    instance: dict[str, Any],
    step_run: StepRun,
    now: datetime,
    post_step: PostStep,
    *,
    error: str,
) -> Upgraded | None:
    moved = not error
    assignments = ", ".join(f"{column} = %s" for column in instance)
    values = [Jsonb(value) if column in _JSON_FIELDS else value for column, value in instance.items()]
    item: dict[str, Any] = {
        "state": BatchItem.State.SUCCEEDED if moved else BatchItem.State.FAILED,
        "expected_revision": claim.revision + 1,  # the post-step revision
        "from_version_id": None,
        "from_step": "",
        "from_status": "",
        "from_context": None,
        "to_version_id": None,
        "to_step": "",
        "revision_after": None,
        "error": error,
    }
    if moved:  # the snapshot a rollback restores: the state the step left
        item.update(
            from_version_id=claim.version_id,
            from_step=post_step.step,
            from_status=post_step.status,
            from_context=post_step.context,
            to_version_id=route.target_id,
            to_step=instance["current_step"],
            revision_after=instance["revision"],
        )
    item_values = [
        Jsonb(value) if name in _JSON_FIELDS and value is not None else value for name, value in item.items()
    ]
    instances, versions = WorkflowInstance._meta.db_table, WorkflowVersion._meta.db_table
    batches, items = MigrationBatch._meta.db_table, BatchItem._meta.db_table
    sql = f"""
        WITH batch AS (
            SELECT id FROM {batches} WHERE id = %s AND state = %s AND auto_upgrade
                AND source_version_id = %s AND target_version_id = %s FOR KEY SHARE
        ), route AS (
            SELECT 1 FROM {versions} source JOIN {versions} target ON target.id = source.upgrade_to_id
            WHERE source.id = %s AND target.id = %s AND target.version = %s
        ), written AS (
            UPDATE {instances} SET {assignments}
            WHERE id = %s AND revision = %s AND status = %s AND NOT move_pending AND version_id = %s
                AND EXISTS (SELECT 1 FROM batch) AND EXISTS (SELECT 1 FROM route)
                AND NOT EXISTS (SELECT 1 FROM {items} WHERE batch_id = %s AND instance_id = %s)
            RETURNING id
        ), source AS (
            -- Locked after the instance (as a chunk locks instances, then the version to check it
            -- drained) and before the batch's counters (as the safe point's _move does).
            SELECT state FROM {versions} WHERE id = %s AND EXISTS (SELECT 1 FROM written) FOR KEY SHARE
        ), run AS (
            INSERT INTO {StepRun._meta.db_table} ({", ".join(StepRun.INSERTED)})
            SELECT {", ".join(["%s"] * len(StepRun.INSERTED))} WHERE EXISTS (SELECT 1 FROM written)
        ), item AS (
            INSERT INTO {items} (batch_id, instance_id, finished_at, {", ".join(item)})
            SELECT %s, %s, %s, {", ".join(["%s"] * len(item))} WHERE EXISTS (SELECT 1 FROM written)
        ), counted AS (
            UPDATE {batches} SET total = total + 1, succeeded = succeeded + %s, failed = failed + %s,
                progressed_at = %s
            WHERE id = %s AND EXISTS (SELECT 1 FROM source)
        )
        SELECT EXISTS (SELECT 1 FROM written), (SELECT state FROM source),
            (SELECT state FROM {versions} WHERE id = %s), EXISTS (SELECT 1 FROM route)
    """
    params: list[Any] = [
        route.batch_id,
        MigrationBatch.State.RUNNING,
        claim.version_id,
        route.target_id,
        claim.version_id,
        route.target_id,
        route.target_label,
        *values,
        claim.instance_id,
        claim.revision,
        InstanceStatus.RUNNING,
        claim.version_id,
        route.batch_id,
        claim.instance_id,
        claim.version_id,
        *step_run.inserted_values(),
        route.batch_id,
        claim.instance_id,
        now,
        *item_values,
        int(moved),
        int(not moved),
        now,
        route.batch_id,
        route.target_id,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        written, source_state, target_state, still_routed = cursor.fetchone()
    if not written:
        if not still_routed:  # the version no longer upgrades there: learn anew
            routes.pop(claim.version_id, None)
        return None
    if moved:
        _note_moved(claim.version_id, source_state, route.target_id, target_state)
    return Upgraded(
        moved,
        route.target_id if moved else claim.version_id,
        route.target_label if moved else claim.version_label,
        instance.get("current_step", post_step.step),
        instance["status"],
        instance["revision"],
        instance.get("context", post_step.context),
    )


def _note_moved(source_id: int, source_state: str, target_id: int, target_state: str) -> None:
    """Drained means nothing in flight (see the module's docstring for why asking after the commit is right)."""
    why = "an auto-upgrade moved its last in-flight instance away"
    if source_state == WorkflowVersion.State.DRAINING and not lifecycle.any_in_flight(source_id):
        lifecycle.mark_drained_when_empty(source_id, why=why, actor="system:upgrades")
    if target_state == WorkflowVersion.State.DRAINED:
        lifecycle.reopen_if_drained(
            [target_id], why="an auto-upgrade moved an instance onto it", actor="system:upgrades"
        )
