"""What a deploy will do, before it does it (read-only, as `workflows diff` and `workflows verify`): the
diff of two versions, and the migrations into a version run on a stratified sample of live instances;
and the operator's acknowledgement of a label whose code changed shape (`workflows acknowledge-shape`)."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Query, Router
from ninja.decorators import decorate_view

from workflows_admin.workflows.permissions import LIFECYCLE, VIEW
from workflows_admin.workflows.services import lifecycle
from workflows_admin.workflows.services.registry_sync import acknowledge_shape_change
from workflows_admin.workflows.services.verification import verify, version_diff

from .. import serializers
from ..auth import require
from ..idempotency import idempotent
from ..schemas import AcknowledgeShapeIn, DiffOut, VerificationOut, VersionOut
from . import with_errors

router = Router(tags=["deploy"])


@router.get(
    "/workflows/{workflow}/versions/{version}/diff",
    response=with_errors({200: DiffOut}),
    summary="What changes from this version to `to`, each change classified, with the instances it affects",
)
def diff(request: HttpRequest, workflow: str, version: str, to: str):
    require(request, VIEW)
    return version_diff(workflow, source=version, target=to)


@router.get(
    "/workflows/{workflow}/versions/{version}/verification",
    response=with_errors({200: VerificationOut}),
    summary="Run the migrations into this version on a stratified sample of live instances (ok: false on a failure)",
)
def verification(
    request: HttpRequest,
    workflow: str,
    version: str,
    sample: str | None = None,
    per_stratum: str | None = None,
    source: list[str] | None = Query(None),  # noqa: B008 (ninja's way to take a repeated query parameter)
):
    require(request, VIEW)
    return verify(workflow, version, sample=sample, per_stratum=per_stratum, sources=source).as_dict()


@router.post(
    "/workflows/{workflow}/versions/{version}/acknowledge-shape",
    response=with_errors({200: VersionOut}),
    summary="Acknowledge that the code now under the label runs the instances started on its old shape",
)
@decorate_view(idempotent)
def acknowledge_shape(request: HttpRequest, workflow: str, version: str, payload: AcknowledgeShapeIn):
    require(request, LIFECYCLE)
    row = acknowledge_shape_change(lifecycle.get_version(workflow, version), reason=payload.reason, actor=request.user)
    return serializers.one_version(row)
