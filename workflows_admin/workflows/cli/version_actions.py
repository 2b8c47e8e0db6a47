"""What the lifecycle subcommands (make-current, ramp, drain, retire) share: arguments, actor, output."""

import getpass

from ..models import Workflow
from ..services import lifecycle


def cli_actor() -> str:
    return f"cli:{getpass.getuser()}"


def add_version_arguments(parser) -> None:
    parser.add_argument("workflow", help="Workflow name, e.g. research-agent")
    parser.add_argument("version", help="Version label, e.g. 2.1.0")


def target_version(options):
    return lifecycle.get_version(options["workflow"], options["version"])


def report(version, out) -> dict:
    """Print and return the workflow's versions after the change, so the operator sees the whole routing."""
    workflow = Workflow.objects.get(pk=version.workflow_id)
    versions = []
    for row in workflow.versions.order_by("major", "minor", "patch", "prerelease"):
        ramp = f" ({workflow.ramp_percent}% of new starts)" if row.state == row.State.RAMPING else ""
        out(f"  {row.version:<12} {row.state}{ramp}")
        versions.append({"version": row.version, "state": row.state, "drained_at": row.drained_at})
    return {
        "workflow": workflow.name,
        "version": version.version,
        "state": version.state,
        "ramp_percent": workflow.ramp_percent,
        "versions": versions,
    }
