"""One router per area; each endpoint: permission, service or selector, serialiser."""

import inspect
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest
from ninja import Router
from ninja.decorators import decorate_view
from ninja.responses import Status

from workflows_admin.workflows.services.errors import InvalidInput

from ..auth import require
from ..idempotency import idempotent
from ..pagination import RowId
from ..schemas import Problem

# The errors every endpoint may answer, for the OpenAPI schema (all in problems.py's shape).
ERRORS: dict[int, Any] = {
    400: Problem,
    401: Problem,
    403: Problem,
    404: Problem,
    409: Problem,
    422: Problem,
    503: Problem,  # a deadlock victim that stayed one: nothing changed, send it again
}


def with_errors(responses: dict[int, Any]) -> dict[int, Any]:
    return {**responses, **ERRORS}


def one_of(value: str | None, choices: list[str], field: str) -> str | None:
    """A query filter that must be one of `choices` (None: not given); InvalidInput naming the field otherwise."""
    if value is not None and value not in choices:
        raise InvalidInput(f"{field} must be one of {', '.join(choices)}", field=field)
    return value


def row_action(
    router: Router,
    collection: str,
    resource: str,
    name: str,
    *,
    operate: Callable[..., Any],
    permission: str,
    read: Callable[[int], dict],
    response: Any,
    summary: str,
    status: int = 200,
) -> Callable[..., Any]:
    """`POST /{collection}/{<resource>_id}/{name}`, idempotent: the permission, the service on the row's id
    with the caller as actor, and the row it returns read back as `response` (answered with `status`)."""
    param = f"{resource}_id"

    def endpoint(request: HttpRequest, **path: int) -> Status:
        require(request, permission)
        return Status(status, read(operate(path[param], actor=request.user).pk))

    # django-ninja reads the path parameter, and its bounds, from the view's signature.
    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=HttpRequest),
            inspect.Parameter(param, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=RowId),
        ]
    )
    endpoint.__name__ = f"{resource}_{name}"
    return router.post(
        f"/{collection}/{{{param}}}/{name}",
        response=with_errors({status: response}),
        summary=summary,
        operation_id=f"{resource}_{name}",
    )(decorate_view(idempotent)(endpoint))
