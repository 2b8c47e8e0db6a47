from ..models import IN_FLIGHT_STATUSES
from ..selectors import STATUS_ORDER, overview

NAME = "status"
HELP = "Per workflow and version: lifecycle state and instance counts by status."


def add_arguments(parser):
    parser.add_argument("--workflow", help="Only this workflow")


def run(options, out):
    result = []
    for summary in overview():
        if options.get("workflow") and summary.workflow.name != options["workflow"]:
            continue
        versions = []
        out(f"{summary.workflow.name}")
        for item in summary.versions:
            counts = {status: item.counts.get(status, 0) for status in STATUS_ORDER}
            versions.append(
                {
                    "version": item.version.version,
                    "state": item.version.state,
                    "has_code": item.version.has_code,
                    "in_flight": item.in_flight,
                    "counts": counts,
                }
            )
            shown = "  ".join(f"{s}={counts[s]}" for s in STATUS_ORDER if counts[s] or s in IN_FLIGHT_STATUSES)
            flag = "" if item.version.has_code else "  [no code]"
            out(f"  {item.version.version:<12} {item.version.state:<9} in_flight={item.in_flight:<6} {shown}{flag}")
        result.append({"workflow": summary.workflow.name, "versions": versions})
    return {"workflows": result}
