"""`manage.py check` loads the workflow modules, so registration mistakes fail before a deploy."""

from django.core import checks

from workflows_admin.engine import RegistrationError

from .runtime import get_registry


def check_registry(app_configs=None, **kwargs):
    try:
        get_registry()
    except (RegistrationError, ImportError) as exc:
        return [
            checks.Error(
                f"workflow registry cannot load: {exc}",
                hint="Fix the workflow definition, or the module list in WORKFLOWS_MODULES.",
                id="workflows.E001",
            )
        ]
    return []
