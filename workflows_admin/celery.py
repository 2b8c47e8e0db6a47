"""The one Celery app, configured from Django settings with the CELERY_ namespace."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "workflows_admin.settings")

app = Celery("workflows_admin")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
