from ..services import batches
from .batch_output import add_wait_arguments, finish, wait_timeout, waiting_note
from .version_actions import cli_actor

NAME = "rollback"
HELP = "Roll back a migration batch from its snapshots (conflicts are reported unless --force)."


def add_arguments(parser):
    parser.add_argument("batch_id")
    parser.add_argument("--force", action="store_true", help="Also overwrite instances that moved on since")
    parser.add_argument(
        "--reopen-finished",
        action="store_true",
        help="Also restore instances that completed, were cancelled or expired since (never without it)",
    )
    add_wait_arguments(parser)


def run(options, out):
    timeout = wait_timeout(options)
    batch = batches.start_rollback(
        options["batch_id"], actor=cli_actor(), force=options["force"], reopen_finished=options["reopen_finished"]
    )
    out(f"batch #{batch.pk}: rolling back {batch.total} instance(s) of batch #{batch.parent_id}" + waiting_note(batch))
    return finish(batch, options, out, timeout)
