"""Operator pages. Thin: parse input, call a selector or a service, render.

Every page works without JavaScript (plain links and forms); htmx swaps the partials named
`template.html#partial` for live counts and batch progress. Service errors come back as the page
with the message next to the form and the service's 4xx status.
"""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRefresh

from workflows_admin.workflows import listings, selectors
from workflows_admin.workflows.models import (
    InstanceStatus,
    MigrationBatch,
    Rollout,
    WorkflowInstance,
    WorkflowVersion,
)
from workflows_admin.workflows.permissions import APPROVE, LIFECYCLE, MIGRATE, OPERATE, ROLLBACK, ROLLOUTS, VIEW
from workflows_admin.workflows.services import (
    batches,
    cleanup,
    forced_rollback,
    instances,
    lifecycle,
    rollouts,
    upgrades,
)
from workflows_admin.workflows.services.errors import Conflict, InvalidInput, ServiceError
from workflows_admin.workflows.services.numbers import MAX_ID, parse_whole_number
from workflows_admin.workflows.services.registry_sync import acknowledge_shape_change, shape_change_flags

from . import charts, deploy, diffs, wizard
from .http import HtmxHttpRequest, version_or_404


def requires(permission: str):
    """Login first (redirect), then the permission (403): buttons are hidden, endpoints refuse too."""

    def decorate(view):
        @login_required
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            if not request.user.has_perm(permission):
                raise PermissionDenied(f"needs the permission {permission}")
            return view(request, *args, **kwargs)

        return wrapped

    return decorate


def can(request: HtmxHttpRequest) -> dict[str, bool]:
    user = request.user
    return {
        "migrate": user.has_perm(MIGRATE),
        "rollback": user.has_perm(ROLLBACK),
        "lifecycle": user.has_perm(LIFECYCLE),
        "operate": user.has_perm(OPERATE),
        "rollouts": user.has_perm(ROLLOUTS),
        "approve": user.has_perm(APPROVE),
    }


# --- overview -----------------------------------------------------------------------------------
@require_GET
@requires(VIEW)
def overview(request: HtmxHttpRequest) -> HttpResponse:
    workflows = selectors.overview()
    lifecycle_facts = selectors.version_lifecycle()
    context = {
        "workflows": workflows,
        "lifecycle": lifecycle_facts,
        "charts": {summary.workflow.pk: charts.in_flight_chart(summary.workflow) for summary in workflows},
        "shape_flags": shape_change_flags(),
        "now": timezone.now(),
    }
    template = "dashboard/overview.html#counts" if request.htmx else "dashboard/overview.html"
    return render(request, template, context)


# --- version ------------------------------------------------------------------------------------
INSTANCE_PAGE_SIZE = 50


class CountedPaginator(Paginator):
    """A paginator told its total (from the trigger-kept counters) instead of running COUNT(*)."""

    def __init__(self, object_list, per_page, total: int):
        super().__init__(object_list, per_page)
        self.total = total

    @property
    def count(self) -> int:
        return self.total


MAX_AGE_HOURS = 24 * 365 * 100  # "older than" a century: as far back as a filter needs to reach


def _query_int(text: str | None) -> int | None:
    """The whole number typed in a query field (filters, page), or None: the filter is then not applied."""
    try:
        return parse_whole_number(text, "query", minimum=0, maximum=MAX_ID)
    except InvalidInput:
        return None


INSTANCE_COLUMNS = ("pk", "status", "current_step", "created_at", "updated_at", "status_reason", "version_id")


def _instance_filters(request, version: WorkflowVersion):
    status = request.GET.get("status", "")
    if status not in InstanceStatus.values:
        status = ""
    older = request.GET.get("older_than_hours", "")
    hours = _query_int(older)
    search = request.GET.get("id", "").strip().lstrip("#")
    rows = listings.instances(
        version=version,
        status=status or None,
        created_before=None if hours is None else timezone.now() - timedelta(hours=min(hours, MAX_AGE_HOURS)),
        instance_id=_query_int(search),
        fields=INSTANCE_COLUMNS,
    )
    return rows, {"status": status, "older_than_hours": older, "id": search}


def _version_context(request, version: WorkflowVersion, **extra):
    rows, filters = _instance_filters(request, version)
    counts = selectors.status_counts_by_version([version.workflow_id]).get(version.pk, {})
    if filters["older_than_hours"] or filters["id"]:
        paginator = Paginator(rows, INSTANCE_PAGE_SIZE)
    else:  # the counters already know how many rows there are: no COUNT(*) over the version
        known = counts.get(filters["status"], 0) if filters["status"] else sum(counts.values())
        paginator = CountedPaginator(rows, INSTANCE_PAGE_SIZE, known)
    page = paginator.get_page(_query_int(request.GET.get("page")))
    paths = selectors.migration_paths(version)
    facts = selectors.version_lifecycle(version.workflow_id).get(version.pk, {})
    return {
        "version": version,
        "status_counts": [(status, label, counts.get(status, 0)) for status, label in InstanceStatus.choices],
        "statuses": InstanceStatus.choices,
        "facts": facts,
        "actions": selectors.version_actions(version, facts.get("in_flight", 0)),
        "page": page,
        "filters": filters,
        "migrations_in": paths.into,
        "migrations_out": paths.out,
        "targets": paths.targets,
        "batches": selectors.batches_from(version),
        "step_versions": selectors.live_step_versions(version),
        "patches": selectors.patch_usage(version.workflow, version),
        "contract": json.dumps(version.contract, indent=2),
        "can": can(request),
        "rollouts": selectors.active_rollouts(version.workflow_id),
        "strategies": Rollout.Strategy.choices,
        "on_breach_choices": Rollout.OnBreach.choices,
        "upgrade_policies": WorkflowVersion.UpgradePolicy.choices,
        **deploy.page_facts(version, request.GET.get("compare")),
        **deploy.verification_section(version, request.GET),
        **wizard.graph_context(version, request.GET.get("graph_to") or next(iter(paths.targets), "")),
        **extra,
    }


@require_GET
@requires(VIEW)
def version_detail(request, pk: int):
    version = version_or_404(pk)
    context = _version_context(request, version)
    refused = context.get("verification_error")  # a Verify with a bad sample size
    return render(request, "dashboard/version.html", context, status=refused.status_code if refused else 200)


@require_POST
@requires(LIFECYCLE)
def version_lifecycle(request, pk: int):
    version = version_or_404(pk)
    action = request.POST.get("action")
    try:
        if action == "make_current":
            lifecycle.make_current(version, actor=request.user)
        elif action == "drain":
            lifecycle.drain(version, actor=request.user)
        elif action == "retire":
            lifecycle.retire(version, actor=request.user)
        elif action == "ramp":
            lifecycle.set_ramp(version, request.POST.get("percent", ""), actor=request.user)
        elif action == "upgrade_policy":
            upgrades.set_upgrade_policy(version, request.POST.get("policy", ""), actor=request.user)
        elif action == "acknowledge_shape":
            acknowledge_shape_change(version, reason=request.POST.get("reason", ""), actor=request.user)
        else:
            raise InvalidInput(f"unknown action {action!r}", field="action")
    except ServiceError as error:
        return render(
            request, "dashboard/version.html", _version_context(request, version, error=error), status=error.status_code
        )
    return redirect("dashboard:version", pk=version.pk)


@requires(MIGRATE)
def version_migrate(request, pk: int):
    """GET: choose the target and filters. POST preview: the dry-run report, selection frozen. POST confirm: start."""
    version = version_or_404(pk)
    data = request.POST if request.method == "POST" else request.GET
    targets = selectors.migration_paths(version).targets
    target = data.get("target") or next(iter(targets), "")
    context = {
        "version": version,
        "targets": targets,
        "statuses": [s for s in InstanceStatus.choices if s[0] in batches.MIGRATABLE_STATUSES],
        "form": data,
        "chosen_statuses": data.getlist("statuses"),
        # "Show its steps" (another target, without JavaScript) starts from that target's own map.
        **wizard.graph_context(version, target, {} if data.get("show") else wizard.step_map_from(data)),
    }
    if request.method == "GET":
        return render(request, "dashboard/migrate.html", {**context, **wizard.count_context(version, data)})
    selection = wizard.selection_from(request.POST)
    pacing = {key: request.POST.get(key, "") for key in batches.PACING_KEYS}
    if pacing["canary_max_failure_rate"].strip():
        # The form asks for a percentage, the service takes a share; a non-number is left as typed and the
        # service names the field in its error.
        with contextlib.suppress(ValueError):
            pacing["canary_max_failure_rate"] = float(pacing["canary_max_failure_rate"]) / 100
    try:
        paced = batches.Pacing.parse(pacing)  # checked before the dry-run too: the preview shows it as understood
        if request.POST.get("confirm"):
            # A confirmation starts the selection a preview froze; without one it would migrate everything.
            if not request.POST.get("selection_token"):
                raise InvalidInput(
                    "confirm needs the selection_token of a preview; preview first", field="selection_token"
                )
            batch = batches.start_migration(
                version.workflow.name,
                source=version.version,
                target=request.POST.get("target", ""),
                actor=request.user,
                selection_token=request.POST.get("selection_token"),
                pacing=pacing,
            )
            return redirect("dashboard:batch", pk=batch.pk)
        preview = batches.preview_migration(
            version.workflow.name,
            source=version.version,
            target=request.POST.get("target", ""),
            selection=selection,
            freeze=True,
            actor=request.user,
            step_map=wizard.step_map_from(request.POST),
        )
    except ServiceError as error:
        return render(request, "dashboard/migrate.html", {**context, "error": error}, status=error.status_code)
    report = preview.report
    for example in report["examples"]:
        example["rows"] = diffs.diff_rows(example["diff"])
    return render(
        request,
        "dashboard/migrate.html",
        {
            **context,
            "preview": preview,
            "report": report,
            "target": request.POST.get("target", ""),
            "pacing": {key: request.POST.get(key, "") for key in batches.PACING_KEYS},  # carried to the confirmation
            "paced": paced,
            "confirm": _confirm_count(report),
            "version_diff": {"diff": deploy.migrate_diff(version, request.POST.get("target", ""))},
        },
    )


def _confirm_count(report: dict) -> dict:
    """How many the confirm button says would migrate: exact for a dry-run of the whole selection,
    estimated from the share of a sample otherwise."""
    if not report["sampled"] or not report["examined"]:
        return {"count": report["would_migrate"], "estimated": False}
    return {"count": round(report["selected"] * report["would_migrate"] / report["examined"]), "estimated": True}


# The wizard's htmx partials (dashboard/wizard.py): the graph for another target, the live count.
migrate_mapping = requires(MIGRATE)(wizard.migrate_mapping)
migrate_count = requires(MIGRATE)(wizard.migrate_count)


# --- batches ------------------------------------------------------------------------------------
def _progress_context(request, batch: MigrationBatch) -> dict:
    """What the progress partial shows (the whole page and the poll alike)."""
    facts = selectors.batch_follow_ups(batch) if batch.state != MigrationBatch.State.RUNNING else None
    # A button is shown iff the user has its permission and the action's rule allows it now.
    shown = {
        name: verdict.allowed and request.user.has_perm(BATCH_ACTIONS[name][0])
        for name, verdict in selectors.batch_actions(batch, facts, request.user).items()
    }
    return {
        "batch": batch,
        "progress": selectors.batch_progress(batch),
        "can": can(request),
        "actions": shown,
        "any_action": any(shown.values()),
        "rolled_back": selectors.rollback_state(batch, facts["undone"]) if facts else "",
        "left_to_retry": batch.failed - facts["retried"] if facts else 0,
        "waits_for": selectors.batch_waits_for(batch, request.user),
    }


def _batch_context(request, batch: MigrationBatch, **extra):
    return {
        **_progress_context(request, batch),
        "failures": selectors.batch_failures(batch),
        "children": listings.batch_children(batch),
        "started_by": selectors.started_by(batch),
        **extra,
    }


@require_GET
@requires(VIEW)
def batch_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    batch = get_object_or_404(
        MigrationBatch.objects.select_related(*listings.BATCH_JOINS, "created_by", "parent"), pk=pk
    )
    if request.htmx:  # the progress poll: counters from the batch row only
        if batch.is_finished:
            # Done while the page watched: reload it whole once, for the final list of failures.
            return HttpResponseClientRefresh()
        return render(request, "dashboard/batch.html#progress", _progress_context(request, batch))
    return render(request, "dashboard/batch.html", _batch_context(request, batch))


BATCH_ACTIONS = {
    "pause": (MIGRATE, lambda batch_id, user, post: batches.pause_batch(batch_id, actor=user)),
    "resume": (MIGRATE, lambda batch_id, user, post: batches.resume_batch(batch_id, actor=user)),
    "cancel": (MIGRATE, lambda batch_id, user, post: batches.cancel_batch(batch_id, actor=user)),
    "retry": (MIGRATE, lambda batch_id, user, post: batches.retry_failed(batch_id, actor=user)),
    "rollback": (
        ROLLBACK,
        lambda batch_id, user, post: batches.start_rollback(batch_id, actor=user, force=post.get("force") == "1"),
    ),
    "force_conflicts": (
        ROLLBACK,
        lambda batch_id, user, post: forced_rollback.roll_back_conflicts(batch_id, actor=user),
    ),
    "approve": (APPROVE, lambda batch_id, user, post: batches.approve_batch(batch_id, approver=user)),
    "reject": (
        APPROVE,
        lambda batch_id, user, post: batches.reject_batch(batch_id, approver=user, reason=post.get("reason", "")),
    ),
}
# Actions that cannot be undone by another click: a POST without `confirmed` gets a confirmation page
# (static/js/confirm.js asks in a dialog instead and sends `confirmed` itself).
CONFIRMED_BATCH_ACTIONS = ("rollback", "cancel", "force_conflicts", "approve", "reject")


def _perform(request, actions: dict, subject_pk: int, show_error):
    """Run the POSTed action if the user has its permission; a ServiceError re-renders the page with it.

    Returns the service's result, or the error response to send back.
    """
    action = request.POST.get("action", "")
    if action not in actions:
        return show_error(InvalidInput(f"unknown action {action!r}", field="action"), 400)
    permission, run = actions[action]
    if not request.user.has_perm(permission):
        raise PermissionDenied(f"needs the permission {permission}")
    try:
        return run(subject_pk, request.user, request.POST)
    except ServiceError as error:
        return show_error(error, error.status_code)


@require_POST
@login_required
def batch_action(request, pk: int):
    batch = get_object_or_404(MigrationBatch, pk=pk)

    def show_error(error, status):
        batch.refresh_from_db()
        return render(request, "dashboard/batch.html", _batch_context(request, batch, error=error), status=status)

    action = request.POST.get("action", "")
    if action in CONFIRMED_BATCH_ACTIONS and not request.POST.get("confirmed"):
        permission = BATCH_ACTIONS[action][0]
        if not request.user.has_perm(permission):
            raise PermissionDenied(f"needs the permission {permission}")
        facts = selectors.batch_follow_ups(batch)
        verdict = selectors.batch_actions(batch, facts, request.user)[action]
        if not verdict:  # refused now rather than after a confirmation
            return show_error(Conflict(verdict.reason, field="batch"), Conflict.status_code)
        context = {
            "batch": batch,
            "action": action,
            "force": request.POST.get("force") == "1",
            "left_to_undo": batch.succeeded - facts["undone"],
            "unprocessed": max(batch.total - batch.processed, 0),
            "reason": request.POST.get("reason", ""),
            "waits_for": selectors.batch_waits_for(batch),
        }
        return render(request, "dashboard/batch_confirm.html", context)
    result = _perform(request, BATCH_ACTIONS, batch.pk, show_error)
    return result if isinstance(result, HttpResponse) else redirect("dashboard:batch", pk=result.pk)


# --- instances ----------------------------------------------------------------------------------
def _instance_context(request, instance: WorkflowInstance, **extra):
    return {
        "instance": instance,
        "context_json": json.dumps(instance.context, indent=2, sort_keys=True, ensure_ascii=False),
        "step_runs": listings.step_runs(instance),
        "history": selectors.instance_history(instance),
        "targets": selectors.migration_paths(instance.version).targets,
        "can": can(request),
        **extra,
    }


@require_GET
@requires(VIEW)
def instance_detail(request, pk: int):
    instance = get_object_or_404(listings.instances(), pk=pk)
    return render(request, "dashboard/instance.html", _instance_context(request, instance))


def _signal(instance_id, user, post):
    try:
        payload = json.loads(post.get("payload") or "{}")
    except (ValueError, RecursionError) as exc:  # not JSON, a number too long for int(), nested too deep
        raise InvalidInput(f"payload is not valid JSON: {exc}", field="payload") from None
    return instances.signal_workflow(instance_id, payload, actor=user)


INSTANCE_ACTIONS = {
    "migrate": (MIGRATE, lambda pk, user, post: batches.migrate_instance(pk, post.get("target", ""), actor=user)),
    "rollback": (
        ROLLBACK,
        lambda pk, user, post: batches.rollback_instance(pk, actor=user, force=post.get("force") == "1"),
    ),
    "signal": (OPERATE, _signal),
    "cancel": (OPERATE, lambda pk, user, post: instances.cancel_instance(pk, actor=user)),
    "force_complete": (OPERATE, lambda pk, user, post: instances.force_complete(pk, actor=user)),
}


@require_POST
@login_required
def instance_action(request, pk: int):
    instance = get_object_or_404(listings.instances(), pk=pk)

    def show_error(error, status):
        instance.refresh_from_db()
        return render(
            request, "dashboard/instance.html", _instance_context(request, instance, error=error), status=status
        )

    result = _perform(request, INSTANCE_ACTIONS, instance.pk, show_error)
    return result if isinstance(result, HttpResponse) else redirect("dashboard:instance", pk=instance.pk)


# --- audit and cleanup --------------------------------------------------------------------------
@require_GET
@requires(VIEW)
def audit_log(request):
    action = request.GET.get("action", "").strip()
    actor = request.GET.get("actor", "").strip()
    instance = request.GET.get("instance", "").strip().lstrip("#")
    events = listings.audit_events(action=action or None, actor=actor or None, instance=_query_int(instance))
    page = Paginator(events, 100).get_page(_query_int(request.GET.get("page")))
    return render(
        request,
        "dashboard/audit.html",
        {"page": page, "filters": {"action": action, "actor": actor, "instance": instance}},
    )


@require_GET
@requires(VIEW)
def cleanup_preview(request):
    return render(request, "dashboard/cleanup.html", {"plan": cleanup.preview_cleanup()})


# --- rollouts -----------------------------------------------------------------------------------
@require_GET
@requires(VIEW)
def rollout_list(request):
    rows = listings.rollouts()[:50]
    return render(request, "dashboard/rollouts.html", {"rollouts": rows})


def _rollout_context(request, rollout: Rollout, **extra):
    return {
        "rollout": rollout,
        "timeline": selectors.rollout_timeline(rollout),
        "can_manage": request.user.has_perm(ROLLOUTS),
        **extra,
    }


@require_GET
@requires(VIEW)
def rollout_detail(request, pk: int):
    rollout = get_object_or_404(listings.rollouts(), pk=pk)
    return render(request, "dashboard/rollout.html", _rollout_context(request, rollout))


ROLLOUT_ACTIONS = {
    name: (ROLLOUTS, lambda pk, user, post, operate=operate: operate(pk, actor=user))
    for name, operate in (
        ("pause", rollouts.pause_rollout),
        ("resume", rollouts.resume_rollout),
        ("abort", rollouts.abort_rollout),
        ("promote", rollouts.promote_rollout),
    )
}


@require_POST
@login_required
def rollout_action(request, pk: int):
    rollout = get_object_or_404(listings.rollouts(), pk=pk)

    def show_error(error, status):
        rollout.refresh_from_db()
        return render(request, "dashboard/rollout.html", _rollout_context(request, rollout, error=error), status=status)

    result = _perform(request, ROLLOUT_ACTIONS, rollout.pk, show_error)
    return result if isinstance(result, HttpResponse) else redirect("dashboard:rollout", pk=rollout.pk)


@require_POST
@requires(ROLLOUTS)
def rollout_start(request, pk: int):
    version = version_or_404(pk)
    post = request.POST
    try:
        rollout = rollouts.start_rollout(
            version.workflow.name,
            version.version,
            strategy=post.get("strategy", ""),
            gates=post.get("gates", ""),
            step_percent=post.get("step_percent", "").strip() or 10,
            canary_percent=post.get("canary_percent", "").strip() or 10,
            interval_seconds=post.get("interval_seconds", "").strip() or 600,
            on_breach=post.get("on_breach", ""),
            actor=request.user,
            # Unticked: verify first. Ticked: skip it, with the reason typed (the service refuses a blank one).
            skip_verification=post.get("skip_reason", "") if post.get("skip_verification") else None,
        )
    except ServiceError as error:
        context = _version_context(request, version, error=error, verification=deploy.verification_report(error))
        return render(request, "dashboard/version.html", context, status=error.status_code)
    return redirect("dashboard:rollout", pk=rollout.pk)
