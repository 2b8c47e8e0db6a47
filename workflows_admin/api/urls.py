"""The API object and its URLs: /api/v1/ with the schema at openapi.json and interactive docs at docs."""

from __future__ import annotations

from ninja import NinjaAPI
from ninja.openapi.docs import Swagger

from . import problems
from .auth import TokenAuth
from .endpoints import audit, batches, deploy, instances, rollouts, webhooks, workflows

IDEMPOTENCY_KEY = {
    "in": "header",
    "name": "Idempotency-Key",
    "required": False,
    "schema": {"type": "string", "maxLength": 200},
    "description": "A retry with the same key (same user, endpoint and body) gets the first answer back "
    "instead of acting again; the same key with another body is refused (422).",
}


class Api(NinjaAPI):
    def get_openapi_schema(self, *args, **kwargs):
        schema = super().get_openapi_schema(*args, **kwargs)
        for methods in schema["paths"].values():
            if "post" in methods:  # every POST is wrapped by idempotency.idempotent
                parameters = methods["post"].setdefault("parameters", [])
                if IDEMPOTENCY_KEY not in parameters:
                    parameters.append(IDEMPOTENCY_KEY)
        return schema


api = Api(
    title="workflows-admin",
    version="1",
    description=(
        "The control room's API: versions and lifecycle, migrations, batches, rollouts, instances, audit "
        "events and webhooks. Authenticate with `Authorization: Bearer <token>` (`manage.py workflows token "
        "create USER`); the token carries its user's dashboard permissions. POSTs take an `Idempotency-Key`. "
        "Errors are RFC 9457 problem details (`application/problem+json`) naming the field."
    ),
    auth=TokenAuth(),
    urls_namespace="api",
    docs=Swagger(),
)
problems.install(api)
for module in (workflows, deploy, batches, rollouts, instances, audit, webhooks):
    api.add_router("/", module.router)
