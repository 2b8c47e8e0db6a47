from ..services import lifecycle
from .version_actions import add_version_arguments, cli_actor, report, target_version

NAME = "ramp"
HELP = "Send PERCENT %% of new starts to VERSION (0 stops the ramp). Running instances stay where they are."


def add_arguments(parser):
    add_version_arguments(parser)
    parser.add_argument("percent", help="0 to 100")


def run(options, out):
    # The service reads the percent, with the same parser as the dashboard's form.
    version = lifecycle.set_ramp(target_version(options), options["percent"], actor=cli_actor())
    percent = version.workflow.ramp_percent
    out(f"{version} takes {percent}% of new starts" if percent else f"{version} stopped ramping")
    return report(version, out)
