"""Rollouts: start, status, and the operator actions."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router, Status
from ninja.decorators import decorate_view

from workflows_admin.workflows import listings
from workflows_admin.workflows.models import Rollout
from workflows_admin.workflows.permissions import ROLLOUTS, VIEW
from workflows_admin.workflows.services import lifecycle, rollouts
from workflows_admin.workflows.services.lookup import row_by_id

from .. import serializers
from ..auth import require
from ..idempotency import idempotent
from ..pagination import Limit, RowId, paginate
from ..schemas import RolloutIn, RolloutOut, RolloutPage
from . import one_of, row_action, with_errors

router = Router(tags=["rollouts"])


@router.get("/rollouts", response=with_errors({200: RolloutPage}), summary="Rollouts, newest first")
def list_rollouts(
    request: HttpRequest,
    workflow: str | None = None,
    state: str | None = None,
    cursor: str | None = None,
    limit: Limit = 50,
):
    require(request, VIEW)
    name = None if workflow is None else lifecycle.check_workflow_name(workflow)
    rows = listings.rollouts(workflow=name, state=one_of(state, Rollout.State.values, "state"))
    return paginate(rows, cursor, limit, serializers.rollout)


def _rollout(rollout_id: int) -> dict:
    return serializers.rollout(row_by_id(listings.rollouts(), rollout_id, "rollout"), detail=True)


@router.post("/rollouts", response=with_errors({201: RolloutOut}), summary="Start a progressive rollout")
@decorate_view(idempotent)
def start_rollout(request: HttpRequest, payload: RolloutIn):
    require(request, ROLLOUTS)
    row = rollouts.start_rollout(
        payload.workflow,
        payload.version,
        strategy=payload.strategy,
        gates=payload.gates,
        step_percent=payload.step_percent,
        canary_percent=payload.canary_percent,
        interval_seconds=payload.interval_seconds,
        on_breach=payload.on_breach,
        actor=request.user,
    )
    return Status(201, _rollout(row.pk))


@router.get(
    "/rollouts/{rollout_id}",
    response=with_errors({200: RolloutOut}),
    summary="A rollout's status and timeline (every decision with its gate figures)",
)
def get_rollout(request: HttpRequest, rollout_id: RowId):
    require(request, VIEW)
    return _rollout(rollout_id)


def _action(name: str, operate):
    return row_action(
        router,
        "rollouts",
        "rollout",
        name,
        operate=operate,
        permission=ROLLOUTS,
        read=_rollout,
        response=RolloutOut,
        summary=f"{name.capitalize()} the rollout",
    )


pause = _action("pause", rollouts.pause_rollout)
resume = _action("resume", rollouts.resume_rollout)
abort = _action("abort", rollouts.abort_rollout)
promote = _action("promote", rollouts.promote_rollout)
