"""The one Celery app, configured from Django settings with the CELERY_ namespace."""

import os

from celery import Celery
from celery.signals import task_postrun, task_prerun
from django.db import close_old_connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "workflows_admin.settings")

app = Celery("workflows_admin")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(task=None, **kwargs):
    """Around each task, as Django does around each request: drop connections that broke (a failover,
    pg_terminate_backend) or outlived CONN_MAX_AGE, and keep the rest (CELERY_DB_REUSE_MAX)."""
    if task is not None and getattr(task.request, "is_eager", False):
        return  # run inline by the caller, inside the caller's transaction
    close_old_connections()
