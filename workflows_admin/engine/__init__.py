"""The pure-Python core: versions, the authoring registry, migration planning and routing.

Nothing here imports Django, so it can be read, used and tested on its own.
"""

from .contracts import Contract, ContractViolation
from .planning import MigrationFailed, MigrationPlan, PlanningError, StepMapError, dry_run, plan_migration
from .registry import RegistrationError, Registry, StepContext, VersionDef, Wait, Workflow, WorkflowDef
from .versions import InvalidVersion, Version

__all__ = [
    "Contract",
    "ContractViolation",
    "InvalidVersion",
    "MigrationFailed",
    "MigrationPlan",
    "PlanningError",
    "RegistrationError",
    "Registry",
    "StepContext",
    "StepMapError",
    "Version",
    "VersionDef",
    "Wait",
    "Workflow",
    "WorkflowDef",
    "dry_run",
    "plan_migration",
]
