"""Subcommands of `python manage.py workflows`: one module each (or "module:OBJECT" for one of several a
module defines), with NAME, HELP, add_arguments and run.

`run(options, out)` returns a JSON-able result; `out` writes human lines (suppressed with --json).
Bad input raises a ServiceError, which the command turns into a one-line reason and exit code 2; a
result with an "exit_code" (a batch waited for) exits with it, its "message" on stderr (see exit_codes).
"""

from importlib import import_module

SUBCOMMAND_MODULES = [
    "status",
    "sync",
    "version_actions:MAKE_CURRENT",
    "ramp",
    "version_actions:DRAIN",
    "version_actions:RETIRE",
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
    found = []
    for entry in SUBCOMMAND_MODULES:
        name, _, attribute = entry.partition(":")
        module = import_module(f"{__name__}.{name}")
        found.append(getattr(module, attribute) if attribute else module)
    return found
