"""API tokens (stored as their SHA-256 only) and the stored first responses of Idempotency-Keys."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=200, blank=True, help_text="What it is for, e.g. the deploy pipeline")
    prefix = models.CharField(max_length=16, help_text="The token's first characters, to recognise it")
    # A token is 256 random bits, so a plain SHA-256 is enough to make the stored value useless to a reader.
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=200, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.prefix}... ({self.user}{', revoked' if self.revoked_at else ''})"


class IdempotencyRecord(models.Model):
    """The first successful response to a POST with an Idempotency-Key, per user and endpoint.

    The row is inserted in the transaction of the action itself: a concurrent request with the same
    key waits on the unique index, then finds the response; an action that failed leaves no row.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200)
    endpoint = models.CharField(max_length=400, help_text="Method and path")
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of the request body")
    status_code = models.PositiveSmallIntegerField(null=True)
    body = models.TextField(blank=True)
    content_type = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "endpoint", "key"], name="one_response_per_idempotency_key")
        ]

    def __str__(self) -> str:
        return f"{self.endpoint} {self.key}"
