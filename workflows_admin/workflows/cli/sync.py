import getpass

from ..services.code_guard import sync_and_resume
from . import exit_codes

NAME = "sync"
HELP = "Bring the version table in line with the workflow code of this deployment; resume parked instances."


def add_arguments(parser):
    pass


def run(options, out):
    report, resumed = sync_and_resume(actor=f"cli:{getpass.getuser()}")
    for label in report.created_versions:
        out(f"registered {label}")
    for label in report.made_current:
        out(f"made current {label}")
    for label in report.missing_code:
        out(f"no code for {label} (kept, flagged)")
    for label, count in resumed.items():
        out(f"resumed {count} parked instance(s) of {label}")
    result = {
        "created": report.created_versions,
        "made_current": report.made_current,
        "missing_code": report.missing_code,
        "resumed": resumed,
        "shape_changed": report.shape_changed,
    }
    if report.shape_changed:
        for label, flag in report.shape_changed.items():
            out(f"CHANGED SHAPE {label} with {flag['in_flight']} instance(s) in flight:")
            for change in flag["changes"]:
                out(f"  {change['detail']}")
        names = ", ".join(report.shape_changed)
        result["exit_code"] = exit_codes.SHAPE_CHANGED
        result["message"] = (
            f"the code of {names} changed shape since it was registered, with instances in flight: "
            "give the new code a new version label"
        )
    return result
