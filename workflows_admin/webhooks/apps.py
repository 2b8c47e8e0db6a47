from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "workflows_admin.webhooks"
    label = "webhooks"
    verbose_name = "Webhooks"
