"""Batches: list, detail, and the batch page's actions through the same services."""

from django.http import HttpRequest
from ninja import Router, Status
from ninja.decorators import decorate_view

from workflows_admin.workflows import listings
from workflows_admin.workflows.models import MigrationBatch
from workflows_admin.workflows.permissions import MIGRATE, ROLLBACK, VIEW
from workflows_admin.workflows.services import batches, lifecycle
from workflows_admin.workflows.services.lookup import row_by_id

from .. import serializers
from ..auth import require
from ..idempotency import idempotent
from ..pagination import Limit, RowId, paginate
from ..schemas import BatchOut, BatchPage, RollbackIn
from . import one_of, row_action, with_errors

router = Router(tags=["batches"])
ROWS = MigrationBatch.objects.select_related(*listings.BATCH_JOINS)  # by id, previews too


@router.get("/batches", response=with_errors({200: BatchPage}), summary="Batches, newest first")
def list_batches(
    request: HttpRequest,
    workflow: str | None = None,
    state: str | None = None,
    kind: str | None = None,
    cursor: str | None = None,
    limit: Limit = 50,
):
    require(request, VIEW)
    name = None if workflow is None else lifecycle.check_workflow_name(workflow)
    state = one_of(state, MigrationBatch.State.values, "state")
    rows = listings.batches(workflow=name, state=state, kind=one_of(kind, MigrationBatch.Kind.values, "kind"))
    return paginate(rows, cursor, limit, serializers.batch)


def _batch(batch_id: int) -> dict:
    return serializers.batch(row_by_id(ROWS, batch_id, "batch"), detail=True)


@router.get(
    "/batches/{batch_id}",
    response=with_errors({200: BatchOut}),
    summary="A batch: progress, counts, the instances that did not go through, and the actions allowed now",
)
def get_batch(request: HttpRequest, batch_id: RowId):
    require(request, VIEW)
    return _batch(batch_id)


def _action(name: str, operate, summary: str, status: int = 200):
    """Pause, resume and cancel need migrate_instances; so does retry, which answers 201 with the new child batch."""
    return row_action(
        router,
        "batches",
        "batch",
        name,
        operate=operate,
        permission=MIGRATE,
        read=_batch,
        response=BatchOut,
        summary=summary,
        status=status,
    )


pause = _action("pause", batches.pause_batch, "Pause a running batch")
resume = _action("resume", batches.resume_batch, "Resume a paused batch")
cancel = _action("cancel", batches.cancel_batch, "Cancel a batch")
retry = _action(
    "retry", batches.retry_failed, "Migrate a finished batch's failed instances again, as a child batch", status=201
)


@router.post(
    "/batches/{batch_id}/rollback",
    response=with_errors({201: BatchOut}),
    summary="Roll a migration batch back from its snapshots, as a child batch",
    operation_id="batch_rollback",
)
@decorate_view(idempotent)
def rollback(request: HttpRequest, batch_id: RowId, payload: RollbackIn | None = None):
    require(request, ROLLBACK)
    payload = payload or RollbackIn()  # no body: a plain rollback
    row = batches.start_rollback(
        batch_id, actor=request.user, force=payload.force, reopen_finished=payload.reopen_finished
    )
    return Status(201, _batch(row.pk))
