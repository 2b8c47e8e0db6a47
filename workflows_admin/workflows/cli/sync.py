from ..services.registry_sync import sync_registry

NAME = "sync"
HELP = "Bring the version table in line with the workflow code of this deployment."


def add_arguments(parser):
    pass


def run(options, out):
    report = sync_registry()
    for label in report.created_versions:
        out(f"registered {label}")
    for label in report.made_current:
        out(f"made current {label}")
    for label in report.missing_code:
        out(f"no code for {label} (kept, flagged)")
    return {
        "created": report.created_versions,
        "made_current": report.made_current,
        "missing_code": report.missing_code,
    }
