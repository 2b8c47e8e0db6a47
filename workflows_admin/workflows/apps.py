from celery.signals import worker_ready
from django.apps import AppConfig
from django.core import checks
from django.db.models.signals import post_migrate


class WorkflowsConfig(AppConfig):
    name = "workflows_admin.workflows"
    label = "workflows"
    verbose_name = "Workflows"

    def ready(self):
        # Load the Celery app in every Django process (web, manage.py, tests) so that @shared_task
        # binds to it; the package __init__ stays empty to keep the engine free of Django and Celery.
        import workflows_admin.celery  # noqa: F401

        from . import checks as workflow_checks
        from .services.code_guard import on_worker_ready
        from .services.registry_sync import sync_after_migrate

        checks.register(workflow_checks.check_registry)
        checks.register(workflow_checks.check_shapes)
        post_migrate.connect(sync_after_migrate, sender=self)
        # A starting worker syncs the registry and resumes instances parked for lack of its code.
        worker_ready.connect(on_worker_ready, dispatch_uid="workflows.on_worker_ready")
