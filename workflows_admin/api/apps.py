from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "workflows_admin.api"
    label = "api"
    verbose_name = "HTTP API"
