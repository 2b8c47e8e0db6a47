from celery.signals import worker_ready
from django.apps import AppConfig
from django.core import checks
from django.db.models.signals import post_migrate


class WorkflowsConfig(AppConfig):
    name = "workflows_admin.workflows"
    label = "workflows"
    verbose_name = "Workflows"

    def ready(self):
        from . import checks as workflow_checks
        from .services.code_guard import on_worker_ready
        from .services.registry_sync import sync_after_migrate

        checks.register(workflow_checks.check_registry)
        post_migrate.connect(sync_after_migrate, sender=self)
        # A starting worker syncs the registry and resumes instances parked for lack of its code.
        worker_ready.connect(on_worker_ready, dispatch_uid="workflows.on_worker_ready")
