"""Every write to the workflow state. Views, admin actions, commands and Celery tasks call these."""
