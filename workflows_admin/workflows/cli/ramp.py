from ..services import lifecycle
from ..services.errors import InvalidInput
from .version_actions import add_version_arguments, cli_actor, report, target_version

NAME = "ramp"
HELP = "Send PERCENT %% of new starts to VERSION (0 stops the ramp). Running instances stay where they are."


def add_arguments(parser):
    add_version_arguments(parser)
    parser.add_argument("percent", help="0 to 100")


def run(options, out):
    try:
        percent = int(options["percent"])
    except ValueError:
        raise InvalidInput(
            f"percent must be a whole number from 0 to 100, got {options['percent']!r}", field="percent"
        ) from None
    version = lifecycle.set_ramp(target_version(options), percent, actor=cli_actor())
    out(f"{version} takes {percent}% of new starts" if percent else f"{version} stopped ramping")
    return report(version, out)
