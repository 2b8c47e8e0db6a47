"""Subcommands of `python manage.py workflows`: one module each, with NAME, HELP, add_arguments and run.

`run(options, out)` returns a JSON-able result; `out` writes human lines (suppressed with --json).
Bad input raises a ServiceError, which the command turns into a one-line reason and exit code 2; a
result with an "exit_code" (a batch waited for) exits with it, its "message" on stderr (see exit_codes).
"""

from importlib import import_module

SUBCOMMAND_MODULES = [
    "status",
    "sync",
    "make_current",
    "ramp",
    "drain",
    "retire",
    "upgrade_policy",
    "acknowledge_shape",
    "cleanup",
    "migrate",
    "rollback",
    "retry",
    "batches",
    "batch",
    "rollout",
    "diff",
    "verify",
    "token",
]


def subcommands():
    return [import_module(f"{__name__}.{name}") for name in SUBCOMMAND_MODULES]
