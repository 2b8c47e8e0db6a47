"""What the dashboard's views receive: the request type, and the version a URL names."""

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from django_htmx.middleware import HtmxDetails

from workflows_admin.workflows.models import WorkflowVersion


class HtmxHttpRequest(HttpRequest):
    """An HttpRequest that went through django-htmx's middleware (as its docs recommend for type hints):
    `request.htmx` is truthy for requests htmx made."""

    htmx: HtmxDetails


def version_or_404(pk: int) -> WorkflowVersion:
    return get_object_or_404(WorkflowVersion.objects.select_related("workflow"), pk=pk)
