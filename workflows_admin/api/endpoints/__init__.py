"""One router per area; each endpoint: permission, service or selector, serialiser."""

from typing import Any

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
