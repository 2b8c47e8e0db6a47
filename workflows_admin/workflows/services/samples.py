"""Periodic samples of in-flight counts per version, for the overview chart."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, Q
from django.utils import timezone

from ..models import IN_FLIGHT_STATUSES, InFlightSample, WorkflowVersion

KEEP_SAMPLES_FOR = timedelta(days=7)


def sample_in_flight_counts() -> int:
    now = timezone.now()
    versions = WorkflowVersion.objects.exclude(state=WorkflowVersion.State.RETIRED).annotate(
        in_flight=Count("instances", filter=Q(instances__status__in=IN_FLIGHT_STATUSES))
    )
    samples = [InFlightSample(version=v, taken_at=now, in_flight=v.in_flight) for v in versions]
    InFlightSample.objects.bulk_create(samples)
    InFlightSample.objects.filter(taken_at__lt=now - KEEP_SAMPLES_FOR).delete()
    return len(samples)
