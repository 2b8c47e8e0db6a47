from ..services import batches
from .batch_output import batch_result, wait_for
from .version_actions import cli_actor

NAME = "rollback"
HELP = "Roll back a migration batch from its snapshots (conflicts are reported unless --force)."


def add_arguments(parser):
    parser.add_argument("batch_id")
    parser.add_argument("--force", action="store_true", help="Also overwrite instances that moved on since")
    parser.add_argument("--wait", action="store_true")


def run(options, out):
    batch = batches.start_rollback(options["batch_id"], actor=cli_actor(), force=options["force"])
    out(f"batch #{batch.pk}: rolling back {batch.total} instance(s) of batch #{batch.parent_id}")
    if options["wait"]:
        batch = wait_for(batch, out)
    return batch_result(batch)
