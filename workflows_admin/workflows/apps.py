from django.apps import AppConfig
from django.core import checks
from django.db.models.signals import post_migrate


class WorkflowsConfig(AppConfig):
    name = "workflows_admin.workflows"
    label = "workflows"
    verbose_name = "Workflows"

    def ready(self):
        from . import checks as workflow_checks
        from .services.registry_sync import sync_after_migrate

        checks.register(workflow_checks.check_registry)
        post_migrate.connect(sync_after_migrate, sender=self)
