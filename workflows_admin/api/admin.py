"""API tokens in the admin: created (the token shown once, in the message) and revoked through tokens.py."""

from __future__ import annotations

from django.contrib import admin, messages

from workflows_admin.workflows.services.errors import ServiceError

from . import tokens
from .models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "name", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("prefix", "user__username", "name")
    actions = ["revoke"]

    def get_fields(self, request, obj=None):
        return (
            ("user", "name")
            if obj is None
            else ("user", "name", "prefix", "created_by", "created_at", "last_used_at", "revoked_at")
        )

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.get_fields(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False  # revoked, never deleted: the audit log refers to it

    def save_model(self, request, obj, form, change):
        if change:
            return
        try:
            row, token = tokens.create_token(obj.user, name=obj.name, actor=request.user)
        except ServiceError as error:
            self.message_user(request, error.message, messages.ERROR)
            return
        obj.pk = row.pk
        self.message_user(request, f"API token for {row.user}, shown only now; copy it: {token}", messages.SUCCESS)

    @admin.action(description="Revoke the selected tokens", permissions=["change"])
    def revoke(self, request, queryset):
        for row in queryset.filter(revoked_at__isnull=True):
            tokens.revoke_token(row.pk, actor=request.user)
            self.message_user(request, f"revoked {row}", messages.SUCCESS)
