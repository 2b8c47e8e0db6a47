"""The request type the dashboard's views receive."""

from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    """An HttpRequest that went through django-htmx's middleware (as its docs recommend for type hints):
    `request.htmx` is truthy for requests htmx made."""

    htmx: HtmxDetails
