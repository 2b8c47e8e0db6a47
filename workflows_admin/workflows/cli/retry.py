from ..services import batches
from .batch_output import add_wait_arguments, finish, wait_timeout, waiting_note
from .version_actions import cli_actor

NAME = "retry"
HELP = "Migrate again only the failed instances of a finished batch, as a child batch."


def add_arguments(parser):
    parser.add_argument("batch_id")
    add_wait_arguments(parser)


def run(options, out):
    timeout = wait_timeout(options)
    batch = batches.retry_failed(options["batch_id"], actor=cli_actor())
    out(
        f"batch #{batch.pk}: retrying {batch.total} failed instance(s) of batch #{batch.parent_id}"
        + waiting_note(batch)
    )
    return finish(batch, options, out, timeout)
