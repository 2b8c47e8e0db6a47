from ..services import lifecycle
from .version_actions import add_version_arguments, cli_actor, report, target_version

NAME = "make-current"
HELP = "Send new starts to VERSION; the previous current version drains. Running instances stay where they are."


def add_arguments(parser):
    add_version_arguments(parser)


def run(options, out):
    version = lifecycle.make_current(target_version(options), actor=cli_actor())
    out(f"{version} is current")
    return report(version, out)
