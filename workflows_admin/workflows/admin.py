"""Django admin: browse everything, act through the same services as the dashboard.

Instance state is read-only here: editing a row directly would bypass the row locks, revisions
and audit that the services guarantee. Actions call the services and report with admin messages.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from . import permissions
from .models import AuditEvent, BatchItem, MigrationBatch, StepRun, Workflow, WorkflowInstance, WorkflowVersion
from .services import instances, lifecycle, selections
from .services.errors import ServiceError


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Workflow)
class WorkflowAdmin(admin.ModelAdmin):
    list_display = ("name", "ramp_percent", "max_lifetime", "stale_policy")
    search_fields = ("name",)
    fields = ("name", "description", "max_lifetime", "stale_policy", "ramp_percent")
    readonly_fields = ("name", "ramp_percent")  # routing changes go through the lifecycle actions

    def has_add_permission(self, request):
        return False


def _lifecycle_action(service, verb):
    def action(modeladmin, request, queryset):
        if not request.user.has_perm(permissions.LIFECYCLE):
            raise PermissionDenied
        for version in queryset.select_related("workflow"):
            try:
                service(version, actor=request.user)
                modeladmin.message_user(request, f"{version}: {verb}", messages.SUCCESS)
            except ServiceError as error:
                modeladmin.message_user(request, f"{version}: {error.message}", messages.ERROR)

    action.__name__ = f"{verb.replace(' ', '_')}_selected"
    action.short_description = f"{verb.capitalize()} selected versions"
    return action


@admin.register(WorkflowVersion)
class WorkflowVersionAdmin(admin.ModelAdmin):
    list_display = ("__str__", "state", "has_code", "drained_at", "retired_at", "max_lifetime", "stale_policy")
    list_filter = ("workflow", "state", "has_code")
    search_fields = ("workflow__name", "version")
    readonly_fields = (
        "workflow",
        "version",
        "state",
        "has_code",
        "description",
        "steps",
        "contract",
        "code_missing_since",
        "code_missing_reason",
        "drained_at",
        "retired_at",
    )
    # Only the stale-instance policy is edited here; state changes go through the lifecycle actions.
    fields = (*readonly_fields, "max_lifetime", "stale_policy")
    actions = [
        _lifecycle_action(lifecycle.make_current, "made current"),
        _lifecycle_action(lifecycle.drain, "drained"),
        _lifecycle_action(lifecycle.retire, "retired"),
    ]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class MigrateForm(forms.Form):
    target = forms.CharField(help_text="Target version, e.g. 2.1.0")


@admin.register(WorkflowInstance)
class WorkflowInstanceAdmin(ReadOnlyAdmin):
    list_display = ("id", "workflow", "version", "status", "current_step", "revision", "created_at", "updated_at")
    list_filter = ("workflow", "version", "status")
    search_fields = ("=id", "start_key")
    list_select_related = ("workflow", "version", "version__workflow")
    show_full_result_count = False  # counting a million rows on every page is what the counters avoid
    actions = ["migrate_selected", "roll_back_selected", "force_complete_selected"]

    @admin.action(description="Migrate selected to version…")
    def migrate_selected(self, request, queryset):
        if not request.user.has_perm(permissions.MIGRATE):
            raise PermissionDenied
        form = MigrateForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            return TemplateResponse(
                request,
                "admin/workflows/migrate_selected.html",
                {
                    **self.admin_site.each_context(request),
                    "form": form,
                    "queryset": queryset,
                    "action": "migrate_selected",
                    "opts": self.model._meta,
                    "title": "Migrate selected instances",
                },
            )
        target = form.cleaned_data["target"]
        self._report(
            request, selections.migrate_selected(queryset.values_list("pk", flat=True), target, actor=request.user)
        )
        return None

    @admin.action(description="Roll back last migration of selected")
    def roll_back_selected(self, request, queryset):
        if not request.user.has_perm(permissions.ROLLBACK):
            raise PermissionDenied
        self._report(request, selections.rollback_selected(queryset.values_list("pk", flat=True), actor=request.user))

    def _report(self, request, outcome: selections.SelectionOutcome) -> None:
        """A message linking each batch started (the workers run it; its page shows how it goes), one per refusal."""
        for batch in outcome.batches:
            assert batch.source_version is not None and batch.target_version is not None  # set on every batch
            verb = "Rolling back" if batch.kind == MigrationBatch.Kind.ROLLBACK else "Migrating"
            self.message_user(
                request,
                format_html(
                    '{} {} instance(s) {} -> {} in <a href="{}">batch #{}</a>.',
                    verb,
                    batch.total,
                    batch.source_version.version,
                    batch.target_version.version,
                    reverse("dashboard:batch", args=[batch.pk]),
                    batch.pk,
                ),
                messages.SUCCESS,
            )
        for ids, reason in outcome.refused:
            shown = ", ".join(f"#{pk}" for pk in ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
            self.message_user(request, f"{shown}: {reason}", messages.ERROR)

    @admin.action(description="Force-complete selected")
    def force_complete_selected(self, request, queryset):
        if not request.user.has_perm(permissions.OPERATE):
            raise PermissionDenied
        done = 0
        for instance in queryset:
            try:
                instances.force_complete(instance.pk, actor=request.user)
                done += 1
            except ServiceError as error:
                self.message_user(request, f"#{instance.pk}: {error.message}", messages.ERROR)
        self.message_user(request, f"Force-completed {done} instance(s).", messages.SUCCESS)


@admin.register(MigrationBatch)
class MigrationBatchAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "kind",
        "workflow",
        "source_version",
        "target_version",
        "state",
        "total",
        "succeeded",
        "failed",
        "skipped",
        "conflicts",
        "created_by",
        "started_at",
    )
    list_filter = ("kind", "state", "workflow")
    search_fields = ("=id",)


@admin.register(BatchItem)
class BatchItemAdmin(ReadOnlyAdmin):
    list_display = ("id", "batch", "instance", "state", "from_version", "to_version", "error", "finished_at")
    list_filter = ("state",)
    search_fields = ("=batch__id", "=instance__id")
    show_full_result_count = False


@admin.register(StepRun)
class StepRunAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "instance_id",
        "version",
        "step",
        "step_version",
        "attempt",
        "outcome",
        "started_at",
        "finished_at",
    )
    list_filter = ("outcome", "version")
    search_fields = ("=instance__id", "step")
    show_full_result_count = False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "actor_label", "action", "workflow", "version", "instance_id", "batch_id", "message")
    list_filter = ("action", "workflow")
    search_fields = ("actor_label", "action", "message", "=instance__id")
