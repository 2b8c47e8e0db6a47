from ..services import lifecycle
from .version_actions import add_version_arguments, cli_actor, report, target_version

NAME = "drain"
HELP = "Stop new starts on VERSION; it becomes drained when its last in-flight instance finishes."


def add_arguments(parser):
    add_version_arguments(parser)


def run(options, out):
    version = lifecycle.drain(target_version(options), actor=cli_actor())
    out(f"{version} is {version.state}")
    return report(version, out)
