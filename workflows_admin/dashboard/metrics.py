"""/metrics in the Prometheus text format, read from the database at scrape time (a custom collector).

Readable with `Authorization: Bearer $WORKFLOWS_METRICS_TOKEN` or by a logged-in staff user.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpResponse, HttpResponseForbidden
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from workflows_admin.workflows import listings, selectors


class WorkflowCollector:
    def collect(self):
        versions = {v.pk: v for v in listings.versions()}
        instances = GaugeMetricFamily(
            "workflows_instances",
            "Instances per workflow, version and status",
            labels=["workflow", "version", "status"],
        )
        for version_id, counts in selectors.status_counts_by_version().items():
            version = versions[version_id]
            for status, n in counts.items():
                instances.add_metric([version.workflow.name, version.version, status], n)
        yield instances

        steps = GaugeMetricFamily(
            "workflows_step_runs",
            "Finished step runs per version and outcome (failures, retries, ...)",
            labels=["workflow", "version", "outcome"],
        )
        for version_id, outcome, n in listings.step_run_counts():
            version = versions[version_id]
            steps.add_metric([version.workflow.name, version.version, outcome], n)
        yield steps

        progress = GaugeMetricFamily(
            "workflows_batch_items", "Items of unfinished batches by outcome", labels=["batch", "kind", "outcome"]
        )
        for batch in listings.open_batches():
            for outcome in ("succeeded", "failed", "skipped", "conflicts"):
                progress.add_metric([str(batch.pk), batch.kind, outcome], getattr(batch, outcome))
            progress.add_metric([str(batch.pk), batch.kind, "total"], batch.total)
        yield progress


def _allowed(request) -> bool:
    token = settings.WORKFLOWS_METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), token.encode()):
        return True
    return request.user.is_authenticated and request.user.is_staff


@require_GET
def metrics_view(request):
    if not _allowed(request):
        return HttpResponseForbidden("metrics need a bearer token (WORKFLOWS_METRICS_TOKEN) or a staff login\n")
    registry = CollectorRegistry()
    registry.register(WorkflowCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
