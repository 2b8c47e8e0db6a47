"""What the lifecycle subcommands (make-current, ramp, drain, retire) share: arguments, actor, output;
and make-current, drain and retire themselves, which differ only in their service and their line."""

import getpass
from collections.abc import Callable
from dataclasses import dataclass

from .. import listings
from ..models import Workflow, WorkflowVersion
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
    workflow = Workflow.objects.get(pk=version.workflow_id)  # its ramp as the change left it
    versions = []
    for row in listings.versions_of(workflow.pk):
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


@dataclass(frozen=True)
class VersionAction:
    """A subcommand (NAME, HELP, add_arguments, run) that applies one lifecycle service to WORKFLOW VERSION."""

    NAME: str
    HELP: str
    service: Callable[..., WorkflowVersion]
    says: str  # the line after it, "{version}" and "{state}" filled in

    def add_arguments(self, parser) -> None:
        add_version_arguments(parser)

    def run(self, options, out) -> dict:
        version = self.service(target_version(options), actor=cli_actor())
        out(self.says.format(version=version, state=version.state))
        return report(version, out)


MAKE_CURRENT = VersionAction(
    "make-current",
    "Send new starts to VERSION; the previous current version drains. Running instances stay where they are.",
    lifecycle.make_current,
    "{version} is current",
)
DRAIN = VersionAction(
    "drain",
    "Stop new starts on VERSION; it becomes drained when its last in-flight instance finishes.",
    lifecycle.drain,
    "{version} is {state}",
)
RETIRE = VersionAction(
    "retire",
    "Retire VERSION; refused, with the count, while it has instances in flight.",
    lifecycle.retire,
    "{version} is retired",
)
