from ..services import batches
from .batch_output import batch_result, wait_for
from .version_actions import cli_actor

NAME = "retry"
HELP = "Migrate again only the failed instances of a finished batch, as a child batch."


def add_arguments(parser):
    parser.add_argument("batch_id")
    parser.add_argument("--wait", action="store_true")


def run(options, out):
    batch = batches.retry_failed(options["batch_id"], actor=cli_actor())
    out(f"batch #{batch.pk}: retrying {batch.total} failed instance(s) of batch #{batch.parent_id}")
    if options["wait"]:
        batch = wait_for(batch, out)
    return batch_result(batch)
