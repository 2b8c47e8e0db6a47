from ..services.verification import verify
from . import exit_codes

NAME = "verify"
HELP = "Run the migrations into a version on a stratified sample of the live instances; non-zero exit on a failure."


def add_arguments(parser):
    parser.add_argument("workflow", help="Workflow name, e.g. research-agent")
    parser.add_argument("--to", required=True, dest="to_version", help="The target version, e.g. 2.1.0")
    parser.add_argument("--from", action="append", dest="from_versions", help="Only this source version (repeatable)")
    parser.add_argument("--sample", default=None, help="At most this many instances in all (default 1000)")
    parser.add_argument("--per-stratum", default=None, help="At least this many per stratum when it has them (5)")


def print_report(report: dict, out) -> None:
    out(f"verify {report['workflow']} -> {report['target']}: {'ok' if report['ok'] else 'FAILED'}")
    out(f"  {report['summary']}")
    for source, paths in sorted(report["paths"].items()):
        back = " -> ".join(paths["back"]) if paths["back"] else "no path back (no round trip)"
        out(f"  {source}: {' -> '.join(paths['forward'])}; back: {back}")
    for source, count in sorted(report["unreachable"].items()):
        out(f"  {source}: no migration path to {report['target']} ({count} in flight stay on it)")
    for group in report["failures"]:
        out(f"  FAILED {group['count']}x {group['cause']} (strata: {', '.join(group['strata'])})")
        for example in group["examples"]:
            where = f"{example['source']} at {example['step']}, {example['status']}, {example['age']}"
            out(f"    #{example['instance']} ({where}): {example['message']}")
            if example["diff"]:
                out(f"      diff: {example['diff']}")
    capped = [s for s in report["strata"] if s["capped"]]
    if capped:
        out(f"  {len(capped)} stratum age bucket(s) reached the scan cap before their quota")


def run(options, out):
    report = verify(
        options["workflow"],
        options["to_version"],
        sample=options["sample"],
        per_stratum=options["per_stratum"],
        sources=options["from_versions"],
    ).as_dict()
    print_report(report, out)
    if not report["ok"]:
        report["exit_code"] = exit_codes.VERIFY_FAILED
        report["message"] = f"verification failed: {report['summary']}"
    return report
