from ..services.cleanup import preview_cleanup, run_cleanup
from .version_actions import cli_actor

NAME = "cleanup"
HELP = "Expire or migrate instances in flight longer than their max lifetime (--dry-run: only show the plan)."


def add_arguments(parser):
    parser.add_argument("--dry-run", action="store_true", help="Show what a run would do; change nothing")
    parser.add_argument("--chunk-size", default=500, help="Instances per transaction, 1 to 5000 (default 500)")


def run(options, out):
    dry_run = options["dry_run"]
    plan = preview_cleanup() if dry_run else run_cleanup(actor=cli_actor(), chunk_size=options["chunk_size"])
    if not plan.versions:
        out("no stale instances")
    for item in plan.versions:
        line = f"{item.version}: {item.stale} stale (older than {item.max_lifetime}), policy {item.policy}"
        if item.error:
            line += f"; not applied: {item.error}"
        elif not plan.dry_run and item.policy == "expire":
            line += f"; expired {item.expired}"
        elif not plan.dry_run and item.policy == "migrate":
            line += f"; {item.migrating} migrating to {item.target.version} in batch(es) {item.batch_ids}"
        out(line)
    return plan.as_dict()
