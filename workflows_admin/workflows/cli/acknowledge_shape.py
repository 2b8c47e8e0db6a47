from ..services.registry_sync import acknowledge_shape_change
from .version_actions import add_version_arguments, cli_actor, target_version

NAME = "acknowledge-shape"
HELP = (
    "Acknowledge that the code now under VERSION runs the instances started on its old shape (sync then "
    "stops exiting 9 for it); the reason is audited. Otherwise give the new code a new label and migrate."
)


def add_arguments(parser):
    add_version_arguments(parser)
    parser.add_argument("--reason", required=True, help="Why the new code runs the old instances (audited)")


def run(options, out):
    version = acknowledge_shape_change(target_version(options), reason=options["reason"], actor=cli_actor())
    out(f"{version}: its code's shape is now the label's baseline")
    return {"workflow": version.workflow.name, "version": version.version, "acknowledged": True}
