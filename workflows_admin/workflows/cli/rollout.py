from .. import listings
from ..models import Rollout
from ..services import rollouts
from ..services.errors import InvalidInput
from ..services.verification import VerificationFailed
from . import exit_codes
from .verify import print_report
from .version_actions import cli_actor

NAME = "rollout"
HELP = "Progressive rollouts: start, status, pause, resume, abort, promote, tick."
ACTIONS = ("start", "status", "pause", "resume", "abort", "promote", "tick")


def add_arguments(parser):
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("operands", nargs="*", help="start: WORKFLOW VERSION; pause/resume/abort/promote: ROLLOUT_ID")
    parser.add_argument("--strategy", default="linear", help="canary, linear or all_at_once")
    # Numbers go to the service as typed: it reads them with the same parser as the dashboard's form.
    parser.add_argument("--step", default=10, help="Linear: percent added every interval")
    parser.add_argument("--canary", default=10, help="Canary: the first percent")
    parser.add_argument("--interval", default=600, help="Seconds the gates must pass to advance")
    parser.add_argument("--gate", action="append", default=[], help="metric<=threshold[:min=N], repeatable")
    parser.add_argument("--on-breach", default="keep", help="migrate_back, park or keep")
    parser.add_argument(
        "--skip-verification",
        metavar="REASON",
        default=None,
        help="Start without verifying the target on live instances first; the reason is audited",
    )


def describe(rollout: Rollout) -> dict:
    return {
        "rollout_id": rollout.pk,
        "workflow": rollout.workflow.name,
        "target": rollout.target_version.version,
        "previous": rollout.previous_version.version,
        "strategy": rollout.strategy,
        "state": rollout.state,
        "percent": rollout.current_percent,
        "halted_reason": rollout.halted_reason,
        "events": [
            {"at": e.at.isoformat(), "decision": e.decision, "percent": e.percent, "message": e.message}
            for e in listings.rollout_events(rollout)
        ],
    }


def run(options, out):
    action, args = options["action"], options["operands"]
    if action == "start":
        if len(args) != 2:
            raise InvalidInput("rollout start takes WORKFLOW VERSION", field="operands")
        try:
            rollout = rollouts.start_rollout(
                args[0],
                args[1],
                strategy=options["strategy"],
                gates=options["gate"],
                step_percent=options["step"],
                canary_percent=options["canary"],
                interval_seconds=options["interval"],
                on_breach=options["on_breach"],
                actor=cli_actor(),
                skip_verification=options["skip_verification"],
            )
        except VerificationFailed as refused:
            print_report(refused.report, out)
            return {
                "started": False,
                "verification": refused.report,
                "exit_code": exit_codes.VERIFY_FAILED,
                "message": refused.message,
            }
    elif action == "tick":
        decisions = rollouts.tick_rollouts()
        for rollout_id, decision in decisions.items():
            out(f"rollout #{rollout_id}: {decision}")
        return {"decisions": {str(k): v for k, v in decisions.items()}}
    elif action == "status":
        result = [describe(r) for r in listings.rollouts(workflow=args[0] if args else None)[:20]]
        for item in result:
            out(
                f"#{item['rollout_id']} {item['workflow']} {item['previous']} -> {item['target']}: "
                f"{item['state']} at {item['percent']}% {item['halted_reason']}"
            )
        return {"rollouts": result}
    else:
        if len(args) != 1:
            raise InvalidInput(f"rollout {action} takes ROLLOUT_ID", field="operands")
        operate = {
            "pause": rollouts.pause_rollout,
            "resume": rollouts.resume_rollout,
            "abort": rollouts.abort_rollout,
            "promote": rollouts.promote_rollout,
        }[action]
        rollout = operate(args[0], actor=cli_actor())
    out(f"rollout #{rollout.pk} of {rollout.target_version}: {rollout.state} at {rollout.current_percent}%")
    return describe(rollout)
