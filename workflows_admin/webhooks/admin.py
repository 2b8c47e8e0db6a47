"""Subscriptions (changed through subscriptions.py, audited) and the delivery log, read-only."""

from __future__ import annotations

from django import forms
from django.contrib import admin

from workflows_admin.workflows.services.errors import ServiceError

from . import subscriptions
from .events import EVENTS
from .models import WebhookDelivery, WebhookSubscription


class SubscriptionForm(forms.ModelForm):
    events = forms.MultipleChoiceField(choices=[(e, e) for e in EVENTS], widget=forms.CheckboxSelectMultiple)
    secret = forms.CharField(required=False, help_text="Empty: a random one is made (shown on the change page)")

    class Meta:
        model = WebhookSubscription
        fields = ("url", "events", "secret", "active", "description")

    def clean(self):
        data = super().clean()
        try:  # the same checks as the API's
            for name in ("url", "events", "description"):
                if name in data:
                    data[name] = subscriptions.CHECKS[name](data[name])
            data["secret"] = subscriptions.check_secret(data.get("secret"))
        except ServiceError as error:
            raise forms.ValidationError({error.field: error.message}) from None
        return data


@admin.register(WebhookSubscription)
class WebhookSubscriptionAdmin(admin.ModelAdmin):
    form = SubscriptionForm
    list_display = ("url", "events", "active", "description", "created_at")
    list_filter = ("active",)

    def save_model(self, request, obj, form, change):
        fields = {name: form.cleaned_data[name] for name in ("url", "events", "secret", "active", "description")}
        if change:
            subscriptions.update_subscription(obj.pk, actor=request.user, **fields)
        else:
            obj.pk = subscriptions.create_subscription(**fields, actor=request.user).pk

    def delete_model(self, request, obj):
        subscriptions.delete_subscription(obj.pk, actor=request.user)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "event",
        "subscription",
        "state",
        "attempts",
        "last_status_code",
        "last_error",
        "created_at",
        "delivered_at",
    )
    list_filter = ("state", "event")
    search_fields = ("last_error",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
