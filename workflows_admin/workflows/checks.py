"""`manage.py check` loads the workflow modules, so registration mistakes fail before a deploy, and warns
when a version label's code changed shape while instances are in flight on it."""

from django.core import checks
from django.db import DatabaseError

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


def check_shapes(app_configs=None, **kwargs):
    """Old instances must not silently run on new code: compare this code with the database's registry."""
    from .services.registry_sync import unsynced_shape_changes

    try:
        changed = unsynced_shape_changes()
    except (RegistrationError, ImportError):
        return []  # check_registry reports it
    except DatabaseError:
        return []  # no database yet (or no tables before the first migrate): nothing registered to compare
    return [
        checks.Warning(
            f"{label} changed shape since it was registered, with instances in flight on it: {'; '.join(changes)}",
            hint="Give the new code a new version label and migrate the instances to it; "
            "or keep the old shape under this label until they finish.",
            id="workflows.W001",
        )
        for label, changes in changed.items()
    ]
