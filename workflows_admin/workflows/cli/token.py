"""`workflows token create USER [--name NAME]` prints the token last on its line; `token revoke ID`."""

from workflows_admin.api import tokens

from ..services.errors import InvalidInput
from .version_actions import cli_actor

NAME = "token"
HELP = "API tokens: create USER (prints the token, once), revoke TOKEN_ID."


def add_arguments(parser):
    parser.add_argument("action", choices=("create", "revoke"))
    parser.add_argument("operand", help="create: the user name; revoke: the token's id")
    parser.add_argument("--name", default="", help="What the token is for")


def run(options, out):
    if options["action"] == "create":
        row, token = tokens.create_token(options["operand"], name=options["name"], actor=cli_actor())
        out(f"API token #{row.pk} for {row.user.get_username()}: {token}")
        return {"token_id": row.pk, "user": row.user.get_username(), "token": token}
    if options["action"] == "revoke":
        row = tokens.revoke_token(options["operand"], actor=cli_actor())
        out(f"API token #{row.pk} ({row.prefix}...) of {row.user.get_username()} revoked")
        return {"token_id": row.pk, "revoked_at": row.revoked_at.isoformat()}
    raise InvalidInput(f"unknown action {options['action']!r}", field="action")
