from ..services import lifecycle
from .version_actions import add_version_arguments, cli_actor, report, target_version

NAME = "retire"
HELP = "Retire VERSION; refused, with the count, while it has instances in flight."


def add_arguments(parser):
    add_version_arguments(parser)


def run(options, out):
    version = lifecycle.retire(target_version(options), actor=cli_actor())
    out(f"{version} is retired")
    return report(version, out)
