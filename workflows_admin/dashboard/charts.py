"""A small server-rendered SVG chart of in-flight instances per version over time (no JavaScript)."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from django.utils import timezone

from workflows_admin.workflows import listings
from workflows_admin.workflows.models import Workflow

WIDTH, HEIGHT = 560, 120
COLOURS = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#4b5563", "#db2777"]


def in_flight_chart(workflow: Workflow, hours: int = 24) -> dict:
    """Polylines (one per version) scaled into the chart box, plus the legend and the peak value."""
    since = timezone.now() - timedelta(hours=hours)
    samples = listings.in_flight_samples(workflow, since)
    series: dict[str, list[tuple]] = defaultdict(list)
    for label, taken_at, value in samples:
        series[label].append((taken_at, value))
    if not series:
        return {"lines": [], "peak": 0, "width": WIDTH, "height": HEIGHT}
    peak = max(value for points in series.values() for _, value in points) or 1
    start = min(points[0][0] for points in series.values())
    span = max((timezone.now() - start).total_seconds(), 1)
    lines = []
    for index, (label, points) in enumerate(sorted(series.items())):
        coords = " ".join(
            f"{(taken_at - start).total_seconds() / span * WIDTH:.1f},{HEIGHT - value / peak * (HEIGHT - 8):.1f}"
            for taken_at, value in points
        )
        lines.append(
            {"version": label, "points": coords, "colour": COLOURS[index % len(COLOURS)], "last": points[-1][1]}
        )
    return {"lines": lines, "peak": peak, "width": WIDTH, "height": HEIGHT}
