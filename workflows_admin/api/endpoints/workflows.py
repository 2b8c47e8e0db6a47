"""Workflows and versions: counts and lifecycle, the lifecycle actions, migration preview and confirm."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router, Status
from ninja.decorators import decorate_view

from workflows_admin.workflows import listings, selectors
from workflows_admin.workflows.models import MigrationBatch, Workflow
from workflows_admin.workflows.permissions import LIFECYCLE, MIGRATE, VIEW
from workflows_admin.workflows.services import batches, lifecycle
from workflows_admin.workflows.services.errors import NotFound

from .. import serializers
from ..auth import require
from ..idempotency import idempotent
from ..pagination import Limit, paginate
from ..schemas import BatchOut, ConfirmIn, PreviewIn, PreviewOut, RampIn, VersionOut, WorkflowOut, WorkflowPage
from . import with_errors

router = Router(tags=["workflows"])


def _summaries(workflows) -> list[dict]:
    by_pk = {summary.workflow.pk: summary for summary in selectors.overview()}
    facts = selectors.version_lifecycle()
    return [serializers.workflow(by_pk[w.pk], facts) for w in workflows if w.pk in by_pk]


@router.get("/workflows", response=with_errors({200: WorkflowPage}), summary="Workflows with their versions and counts")
def list_workflows(
    request: HttpRequest,
    cursor: str | None = None,
    limit: Limit = 50,
):
    require(request, VIEW)
    page = paginate(listings.workflows(), cursor, limit, lambda row: row)
    page["items"] = _summaries(page["items"])
    return page


def _workflow(name: str) -> Workflow:
    row = listings.workflows().filter(name=lifecycle.check_workflow_name(name)).first()
    if row is None:
        raise NotFound(f"unknown workflow '{name[:80]}'", field="workflow")
    return row


@router.get("/workflows/{workflow}", response=with_errors({200: WorkflowOut}), summary="One workflow")
def get_workflow(request: HttpRequest, workflow: str):
    require(request, VIEW)
    return _summaries([_workflow(workflow)])[0]


@router.get(
    "/workflows/{workflow}/versions/{version}",
    response=with_errors({200: VersionOut}),
    summary="One version: counts by status, lifecycle, and which lifecycle actions its rules allow now",
)
def get_version(request: HttpRequest, workflow: str, version: str):
    require(request, VIEW)
    return serializers.one_version(lifecycle.get_version(workflow, version))


def _lifecycle_action(name: str, operate, summary: str):
    @router.post(
        f"/workflows/{{workflow}}/versions/{{version}}/{name}",
        response=with_errors({200: VersionOut}),
        summary=summary,
        operation_id=f"version_{name.replace('-', '_')}",
    )
    @decorate_view(idempotent)
    def action(request: HttpRequest, workflow: str, version: str):
        require(request, LIFECYCLE)
        row = operate(lifecycle.get_version(workflow, version), actor=request.user)
        return serializers.one_version(row)

    return action


make_current = _lifecycle_action("make-current", lifecycle.make_current, "Make the version current (new starts)")
drain = _lifecycle_action("drain", lifecycle.drain, "Stop starts on a non-current version; it drains")
retire = _lifecycle_action("retire", lifecycle.retire, "Retire a drained version")


@router.post(
    "/workflows/{workflow}/versions/{version}/ramp",
    response=with_errors({200: VersionOut}),
    summary="Send a share of new starts to the version (0 stops the ramp)",
)
@decorate_view(idempotent)
def ramp(request: HttpRequest, workflow: str, version: str, payload: RampIn):
    require(request, LIFECYCLE)
    row = lifecycle.set_ramp(lifecycle.get_version(workflow, version), payload.percent, actor=request.user)
    return serializers.one_version(row)


@router.post(
    "/workflows/{workflow}/versions/{version}/migrations/preview",
    response=with_errors({200: PreviewOut}),
    summary="Dry-run a migration and freeze its selection; confirm with the selection token",
)
@decorate_view(idempotent)
def preview_migration(request: HttpRequest, workflow: str, version: str, payload: PreviewIn):
    require(request, MIGRATE)
    selection = payload.selection.model_dump(exclude_none=True) if payload.selection else None
    preview = batches.preview_migration(
        workflow,
        source=version,
        target=payload.target,
        selection=selection,
        freeze=True,
        actor=request.user,
        step_map=payload.step_map,
    )
    return {"selection_token": preview.selection_token, "selected": preview.selected_count, "report": preview.report}


@router.post(
    "/workflows/{workflow}/versions/{version}/migrations",
    response=with_errors({201: BatchOut}),
    summary="Confirm a preview: migrate exactly the instances it froze",
)
@decorate_view(idempotent)
def confirm_migration(request: HttpRequest, workflow: str, version: str, payload: ConfirmIn):
    require(request, MIGRATE)
    batch = batches.start_migration(
        workflow,
        source=version,
        target=payload.target,
        actor=request.user,
        selection_token=payload.selection_token,
        pacing=payload.pacing.model_dump(exclude_none=True) if payload.pacing else None,
        chunk_size=payload.chunk_size,
    )
    batch = MigrationBatch.objects.select_related(*listings.BATCH_JOINS).get(pk=batch.pk)
    return Status(201, serializers.batch(batch, detail=True))
