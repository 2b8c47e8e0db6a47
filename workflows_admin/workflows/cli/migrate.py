from ..services import batches
from ..services.errors import InvalidInput
from .batch_output import add_wait_arguments, finish, wait_timeout, waiting_note
from .diff import operation_lines
from .version_actions import cli_actor

NAME = "migrate"
HELP = "Migrate in-flight instances of a workflow from one version to another (or --dry-run)."

# Options that take a value, with the field their errors name. Given empty (an unset variable in a
# script: --ids "$IDS"), each is refused: leaving a filter out selects every in-flight instance.
VALUE_OPTIONS = {
    "status": ("--status", "statuses"),
    "ids": ("--ids", "ids"),
    "started_after": ("--started-after", "started_after"),
    "started_before": ("--started-before", "started_before"),
    "step": ("--step", "step"),
    "where": ("--where", "where"),
    "error": ("--error", "error"),
    "map": ("--map", "step_map"),
    "chunk_size": ("--chunk-size", "chunk_size"),
    "start_at": ("--start-at", "not_before"),
    "rate_limit": ("--rate-limit", "rate_limit"),
    "canary": ("--canary", "canary_size"),
    "canary_max_failure_rate": ("--canary-max-failure-rate", "canary_max_failure_rate"),
    "timeout": ("--timeout", "timeout"),
    "max_wait": ("--max-wait", "max_wait"),
    "on_max_wait": ("--on-max-wait", "on_max_wait"),
}


def add_arguments(parser):
    parser.add_argument("workflow")
    parser.add_argument("--from", dest="source", required=True, help="Source version")
    parser.add_argument("--to", dest="target", required=True, help="Target version")
    parser.add_argument("--status", action="append", help="Only instances in this status (repeatable)")
    parser.add_argument("--ids", help="Only these instance ids, comma-separated")
    parser.add_argument("--started-after", help="ISO date-time")
    parser.add_argument("--started-before", help="ISO date-time")
    parser.add_argument("--step", action="append", help="Only instances at this current step (repeatable)")
    parser.add_argument(
        "--where",
        action="append",
        help="Only instances whose context matches (repeatable, all must hold): path = JSON "
        '(model_config.style = "shout"), has path, path contains JSON',
    )
    parser.add_argument("--error", help="Only failed instances whose error contains this text (case-insensitive)")
    parser.add_argument(
        "--map",
        action="append",
        metavar="SOURCE_STEP=TARGET_STEP",
        help="Resume instances at SOURCE_STEP on TARGET_STEP of the target (repeatable); overrides the step map",
    )
    parser.add_argument("--chunk-size", default=500, help="Instances per chunk, 1 to 5000 (default 500)")
    parser.add_argument("--start-at", help="Do not start before this ISO date-time (a maintenance window)")
    parser.add_argument("--rate-limit", help="At most this many instances a second")
    parser.add_argument("--canary", help="Migrate this many first, then check them")
    parser.add_argument(
        "--canary-max-failure-rate",
        help="Go on after the canary only if at most this share (0-1) failed; without it the batch pauses for review",
    )
    parser.add_argument(
        "--max-wait",
        help="Wait at most this many seconds for a running step before its instance moves "
        "(default: until the step ends; a running step is never interrupted unless --on-max-wait interrupt)",
    )
    parser.add_argument(
        "--on-max-wait",
        choices=["skip", "interrupt"],
        help="After --max-wait: skip the instance (default) or interrupt its step (its result is discarded)",
    )
    parser.add_argument("--dry-run", action="store_true", help="Report what would happen; change nothing")
    add_wait_arguments(parser)


def refuse_empty_values(options) -> None:
    for dest, (flag, field) in VALUE_OPTIONS.items():
        value = options.get(dest)
        given = value if isinstance(value, list) else [] if value is None else [value]
        if any(isinstance(text, str) and not text.strip() for text in given):
            raise InvalidInput(f"{flag} was given an empty value; leave the option out to go without it", field=field)


def run(options, out):
    refuse_empty_values(options)
    timeout = wait_timeout(options)
    selection = {
        key: options[key]
        for key in ("ids", "started_after", "started_before", "step", "where", "error")
        if options.get(key) is not None
    }
    if options["status"] is not None:
        selection["statuses"] = options["status"]
    workflow, source, target = options["workflow"], options["source"], options["target"]
    if options["dry_run"]:
        preview = batches.preview_migration(
            workflow, source=source, target=target, selection=selection, step_map=options.get("map")
        )
        report = preview.report
        out(
            f"{workflow} {source} -> {target} via {' -> '.join(report['plan']['path'])}: "
            f"{report['selected']} selected, {report['examined']} examined"
            + (" (a sample)" if report["sampled"] else "")
        )
        for line in operation_lines(report["plan"]["operations"]):
            out(line)
        out(f"  would migrate {report['would_migrate']}, would fail {report['would_fail']}")
        if report["needs_approval"]:
            out(
                f"  over the approval threshold of {report['approval_threshold']} instances: started, it waits "
                "for a second user's approval (workflows batch approve ID)"
            )
        for move in report["step_moves"]:
            out(f"  {move['from'] or '(not started)'} -> {move['to'] or '(not started)'}: {move['count']}")
        for error in report["errors"]:
            out(f"  {error['count']} x {error['error']} (e.g. instances {error['instances']})")
        return {"dry_run": True, **report}
    pacing = {
        "not_before": options.get("start_at"),
        "rate_limit": options.get("rate_limit"),
        "canary_size": options.get("canary"),
        "canary_max_failure_rate": options.get("canary_max_failure_rate"),
        "max_wait": options.get("max_wait"),
        "on_max_wait": options.get("on_max_wait"),
    }
    batch = batches.start_migration(
        workflow,
        source=source,
        target=target,
        selection=selection,
        actor=cli_actor(),
        chunk_size=options["chunk_size"],
        pacing=pacing,
        step_map=options.get("map"),
    )
    override = batch.plan.get("step_map_override", {})
    out(
        f"batch #{batch.pk}: migrating {batch.total} instance(s) {source} -> {target}"
        + "".join(f"; {step} resumes on {to}" for step, to in override.items())
        + waiting_note(batch)
    )
    return {**finish(batch, options, out, timeout), "step_map_override": override}
