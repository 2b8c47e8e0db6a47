from ..services import upgrades
from .version_actions import add_version_arguments, cli_actor, report, target_version

NAME = "upgrade-policy"
HELP = (
    "Set VERSION's upgrade policy: pinned (instances stay until they end) or auto (they move to the "
    "current version at their next step boundary, along a migration path)."
)


def add_arguments(parser):
    add_version_arguments(parser)
    parser.add_argument("policy", help="pinned or auto")


def run(options, out):
    version = upgrades.set_upgrade_policy(target_version(options), options["policy"], actor=cli_actor())
    moving = (
        f"; its instances move to {version.upgrade_to.version} at their next step boundary"
        if version.upgrade_to
        else ""
    )
    out(f"{version} is {version.upgrade_policy}{moving}")
    return {
        **report(version, out),
        "upgrade_policy": version.upgrade_policy,
        "upgrade_to": version.upgrade_to.version if version.upgrade_to else None,
    }
