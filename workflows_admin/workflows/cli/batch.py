import getpass

from django.contrib.auth import get_user_model

from ..services import batches
from ..services.errors import InvalidInput
from .batch_output import batch_result, waiting_note
from .version_actions import cli_actor

NAME = "batch"
HELP = (
    "Pause, resume or cancel a migration or rollback batch (the dashboard's batch page buttons), or approve "
    "or reject (--reason) one awaiting approval, as the dashboard user named like you on this machine."
)
ACTIONS = {
    "pause": batches.pause_batch,
    "resume": batches.resume_batch,
    "cancel": batches.cancel_batch,
    "approve": lambda batch_id, actor: batches.approve_batch(batch_id, approver=cli_user(), actor=actor),
}


def add_arguments(parser):
    parser.add_argument("action", choices=[*ACTIONS, "reject"])
    parser.add_argument("batch_id")
    parser.add_argument("--reason", help="reject: why, for the requester (required)")


def cli_user():
    """Four eyes needs a person: the dashboard user with this machine user's name, whose permission
    (approve_migrations) and identity (not the requester's) the approval rule checks."""
    name = getpass.getuser()
    user = get_user_model().objects.filter(username=name, is_active=True).first()
    if user is None:
        raise InvalidInput(
            f"no active dashboard user named '{name}': the command line approves and rejects as the dashboard "
            "user named like the machine user running it",
            field="user",
        )
    return user


def run(options, out):
    action, reason = options["action"], options.get("reason")
    if action == "reject":
        batch = batches.reject_batch(options["batch_id"], approver=cli_user(), reason=reason, actor=cli_actor())
    elif reason is not None:
        raise InvalidInput("--reason is only for reject", field="reason")
    else:
        batch = ACTIONS[action](options["batch_id"], actor=cli_actor())
    out(f"batch #{batch.pk}: {batch.state} at {batch.processed} of {batch.total}" + waiting_note(batch))
    return batch_result(batch)
