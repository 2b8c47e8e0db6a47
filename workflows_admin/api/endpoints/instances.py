"""Instances: start (one or many), get, list with filters, signal, cancel."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router, Status
from ninja.decorators import decorate_view

from workflows_admin.workflows import listings
from workflows_admin.workflows.models import InstanceStatus
from workflows_admin.workflows.permissions import OPERATE, VIEW
from workflows_admin.workflows.services import batches, instances, lifecycle
from workflows_admin.workflows.services.errors import InvalidInput
from workflows_admin.workflows.services.lookup import row_by_id

from .. import serializers
from ..auth import require
from ..idempotency import idempotent
from ..pagination import Limit, RowId, paginate
from ..schemas import BulkStartIn, InstanceList, InstanceOut, InstancePage, SignalIn, StartIn
from . import one_of, with_errors

router = Router(tags=["instances"])


def _instance(instance_id: int) -> dict:
    return serializers.instance(row_by_id(listings.instances(), instance_id, "instance"))


@router.post("/instances", response=with_errors({201: InstanceOut}), summary="Start one instance")
@decorate_view(idempotent)
def start_instance(request: HttpRequest, payload: StartIn):
    require(request, OPERATE)
    row = instances.start_workflows(
        payload.workflow,
        [payload.context],
        version=payload.version,
        start_keys=[payload.start_key],
        actor=request.user,
    )[0]
    return Status(201, _instance(row.pk))


@router.post(
    "/instances/bulk",
    response=with_errors({201: InstanceList}),
    summary="Start many instances in one transaction: a bad context refuses them all, naming its position",
)
@decorate_view(idempotent)
def start_instances(request: HttpRequest, payload: BulkStartIn):
    require(request, OPERATE)
    rows = instances.start_workflows(
        payload.workflow, payload.contexts, version=payload.version, start_keys=payload.start_keys, actor=request.user
    )
    found = {row.pk: row for row in listings.instances().filter(pk__in=[row.pk for row in rows])}
    return Status(201, {"items": [serializers.instance(found[row.pk]) for row in rows]})


@router.get(
    "/instances",
    response=with_errors({200: InstancePage}),
    summary="Instances, newest first (contexts left out: get one for its context)",
)
def list_instances(
    request: HttpRequest,
    workflow: str | None = None,
    version: str | None = None,
    status: str | None = None,
    started_after: str | None = None,
    started_before: str | None = None,
    cursor: str | None = None,
    limit: Limit = 50,
):
    require(request, VIEW)
    chosen, name = None, None
    if version is not None:
        if workflow is None:
            raise InvalidInput("version needs workflow", field="workflow")
        chosen = lifecycle.get_version(workflow, version)
    elif workflow is not None:
        name = lifecycle.check_workflow_name(workflow)
    rows = listings.instances(
        version=chosen,
        workflow=name,
        status=one_of(status, InstanceStatus.values, "status"),
        created_from=None if started_after is None else batches.parse_moment(started_after, "started_after"),
        created_before=None if started_before is None else batches.parse_moment(started_before, "started_before"),
        context=False,
    )
    return paginate(rows, cursor, limit, lambda row: serializers.instance(row, context=False))


@router.get("/instances/{instance_id}", response=with_errors({200: InstanceOut}), summary="One instance")
def get_instance(request: HttpRequest, instance_id: RowId):
    require(request, VIEW)
    return _instance(instance_id)


@router.post(
    "/instances/{instance_id}/signal",
    response=with_errors({200: InstanceOut}),
    summary="Resume a waiting instance: the payload is merged into its context",
)
@decorate_view(idempotent)
def signal_instance(request: HttpRequest, instance_id: RowId, payload: SignalIn):
    require(request, OPERATE)
    instances.signal_workflow(instance_id, payload.payload, actor=request.user)
    return _instance(instance_id)


@router.post("/instances/{instance_id}/cancel", response=with_errors({200: InstanceOut}), summary="Cancel")
@decorate_view(idempotent)
def cancel_instance(request: HttpRequest, instance_id: RowId):
    require(request, OPERATE)
    instances.cancel_instance(instance_id, actor=request.user)
    return _instance(instance_id)
