"""workflows-admin: the Django project (settings, urls, the Celery app in `celery.py`) and its apps.

Nothing is imported here, so that `workflows_admin.engine` stays importable without Django or Celery;
the workflows app's `ready()` loads the Celery app for every Django process.
"""
