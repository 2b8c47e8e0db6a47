"""Webhook subscriptions and their deliveries (the outbox and its log).

A delivery row is written in the transaction of the action that caused its event, so it exists
exactly when the change does; a Celery task sends it after commit and records each attempt on it.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class WebhookSubscription(models.Model):
    url = models.URLField(max_length=2000, help_text="Receives a POST with a JSON body per event")
    events = models.JSONField(default=list, help_text="Event names it receives, e.g. batch.finished")
    secret = models.CharField(max_length=200, help_text="Key of the HMAC-SHA256 signature of each delivery")
    active = models.BooleanField(default=True)
    description = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.url}"


class WebhookDelivery(models.Model):
    class State(models.TextChoices):
        PENDING = "pending", "Pending"  # not delivered yet; retried at next_attempt_at
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed (gave up)"

    subscription = models.ForeignKey(WebhookSubscription, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=64)
    audit_event = models.ForeignKey("workflows.AuditEvent", null=True, blank=True, on_delete=models.SET_NULL)
    payload = models.JSONField(help_text="The body sent, frozen when the event happened")
    state = models.CharField(max_length=16, choices=State, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # When the next attempt is due; while an attempt runs, when its claim lapses.
    next_attempt_at = models.DateTimeField()
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "webhook deliveries"
        constraints = [models.UniqueConstraint(fields=["subscription", "audit_event"], name="one_delivery_per_event")]
        indexes = [
            models.Index(fields=["next_attempt_at"], name="webhook_delivery_due", condition=models.Q(state="pending"))
        ]

    def __str__(self) -> str:
        return f"{self.event} to {self.subscription_id}: {self.state} after {self.attempts} attempt(s)"
