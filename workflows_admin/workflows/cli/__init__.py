"""Subcommands of `python manage.py workflows`: one module each, with NAME, HELP, add_arguments and run.

`run(options, out)` returns a JSON-able result; `out` writes human lines (suppressed with --json).
Bad input raises a ServiceError, which the command turns into a one-line reason and a non-zero exit.
"""

from importlib import import_module

SUBCOMMAND_MODULES = [
    "status",
    "sync",
    "make_current",
    "ramp",
    "drain",
    "retire",
    "cleanup",
    "migrate",
    "rollback",
    "retry",
    "batches",
    "rollout",
]


def subcommands():
    return [import_module(f"{__name__}.{name}") for name in SUBCOMMAND_MODULES]
