"""What a deploy will do, before it does it (both read-only, as `workflows diff` and `workflows verify`):
the diff of two versions, and the migrations into a version run on a stratified sample of live instances."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Query, Router

from workflows_admin.workflows.services.verification import verify, version_diff

from ..auth import VIEW, require
from ..schemas import DiffOut, VerificationOut
from . import with_errors

router = Router(tags=["deploy"])


@router.get(
    "/workflows/{workflow}/versions/{version}/diff",
    response=with_errors({200: DiffOut}),
    summary="What changes from this version to `to`, each change classified, with the instances it affects",
)
def diff(request: HttpRequest, workflow: str, version: str, to: str):
    require(request, VIEW)
    return version_diff(workflow, version, to)


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
