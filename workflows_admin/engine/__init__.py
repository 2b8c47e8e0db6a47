"""The pure-Python core: versions, the authoring registry, migration planning and routing.

Nothing here imports Django, so it can be read, used and tested on its own.
"""

from .contracts import Contract, ContractViolation
from .operations import DeclarationError, Default, Drop, Operations, Put, Rename, default, drop, put, rename
from .planning import MigrationFailed, MigrationPlan, PlanningError, StepMapError, dry_run, plan_migration
from .registry import RegistrationError, Registry, StepContext, VersionDef, Wait, Workflow, WorkflowDef
from .versions import InvalidVersion, Version

__all__ = [
    "Contract",
    "ContractViolation",
    "DeclarationError",
    "Default",
    "Drop",
    "InvalidVersion",
    "MigrationFailed",
    "MigrationPlan",
    "Operations",
    "PlanningError",
    "Put",
    "RegistrationError",
    "Registry",
    "Rename",
    "StepContext",
    "StepMapError",
    "Version",
    "VersionDef",
    "Wait",
    "Workflow",
    "WorkflowDef",
    "default",
    "drop",
    "dry_run",
    "plan_migration",
    "put",
    "rename",
]
