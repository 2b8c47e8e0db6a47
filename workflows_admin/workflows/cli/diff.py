from ..services.verification import version_diff

NAME = "diff"
HELP = "What changes from one version to another, each change classified, with the in-flight instances it affects."


def add_arguments(parser):
    parser.add_argument("workflow", help="Workflow name, e.g. research-agent")
    parser.add_argument("source", help="The version instances are on, e.g. 2.0.0")
    parser.add_argument("target", help="The version compared with it, e.g. 3.0.0")


def operation_lines(operations: dict[str, list[str] | None]) -> list[str]:
    """What each hop of a path does to a context (a plan's or a diff's "operations"), a line each."""
    return [
        f"  {hop}: {'; '.join(done) if done else 'a function (what it does is in its code)'}"
        for hop, done in operations.items()
    ]


def run(options, out):
    diff = version_diff(options["workflow"], source=options["source"], target=options["target"])
    out(f"{diff['workflow']} {diff['source']} -> {diff['target']}: {diff['classification']}")
    for change in diff["changes"]:
        out(f"  {change['classification']:<10} {change['detail']}")
    if not diff["changes"]:
        out("  no change")
    forward, back = diff["paths"]["forward"], diff["paths"]["back"]
    forward_words, back_words = " -> ".join(forward or ["none"]), " -> ".join(back or ["none"])
    out(f"  migration path: {forward_words}; back: {back_words}")
    for line in operation_lines(diff["operations"]):
        out(line)
    for step in diff["affected_steps"]:
        out(f"  {step['sentence']}")
    return diff
