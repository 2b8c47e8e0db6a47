from ..services import batches
from .batch_output import batch_result
from .version_actions import cli_actor

NAME = "batch"
HELP = "Pause, resume or cancel a migration or rollback batch (the dashboard's batch page buttons)."
ACTIONS = {"pause": batches.pause_batch, "resume": batches.resume_batch, "cancel": batches.cancel_batch}


def add_arguments(parser):
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("batch_id")


def run(options, out):
    batch = ACTIONS[options["action"]](options["batch_id"], actor=cli_actor())
    out(f"batch #{batch.pk}: {batch.state} at {batch.processed} of {batch.total}")
    return batch_result(batch)
