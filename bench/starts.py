"""Starts: start_workflows in bulk (routing, contract validation, one INSERT per call, dispatch after
commit), in starts/second, against a one-at-a-time start_workflow loop and a bare bulk INSERT of the
same rows measured in the same run. Target: 5,000 starts/s.

    python bench/starts.py [--quick]
"""

from __future__ import annotations

from common import print_table, purge_broker, setup_django, size, timed, truncate


def contexts(n: int, offset: int = 0) -> list[dict]:
    return [
        {
            "topic": f"topic {i}",
            "enriched_text": f"text number {i} about research",
            "sources": [],
            "model_config": {"model": "fake-model", "temperature": 0.0},
        }
        for i in range(offset, offset + n)
    ]


def main() -> None:
    setup_django()
    from django.utils import timezone

    from workflows_admin.workflows.models import InstanceStatus, WorkflowInstance, WorkflowVersion
    from workflows_admin.workflows.services.instances import start_workflow, start_workflows
    from workflows_admin.workflows.services.registry_sync import sync_registry

    sync_registry()
    total = size(20_000, 2_000)
    per_call = 1_000
    sample = size(1_000, 200)
    purge_broker()
    start_workflows("research-agent", contexts(10))  # warm up

    with timed() as bulk_time:
        for offset in range(0, total, per_call):
            start_workflows("research-agent", contexts(per_call, offset))
    purge_broker()

    with timed() as single_time:
        for context in contexts(sample):
            start_workflow("research-agent", context)
    purge_broker()

    version = WorkflowVersion.objects.get(workflow__name="research-agent", state="current")
    now = timezone.now()
    with timed() as floor_time:
        for offset in range(0, total, per_call):
            WorkflowInstance.objects.bulk_create(
                WorkflowInstance(
                    workflow_id=version.workflow_id,
                    version=version,
                    status=InstanceStatus.PENDING,
                    current_step="analyze",
                    context=c,
                    created_at=now,
                    updated_at=now,
                )
                for c in contexts(per_call, offset)
            )
    truncate()

    bulk_rate = total / bulk_time()
    single_rate = sample / single_time()
    floor_rate = total / floor_time()
    print_table(
        f"Starts: {total:,} research-agent instances, {per_call:,} per start_workflows call",
        [
            ("start_workflows (bulk)", f"{bulk_rate:,.0f} starts/s (target >= 5,000)"),
            ("start_workflow one at a time", f"{single_rate:,.0f} starts/s ({sample:,} sampled)"),
            ("bare bulk INSERT (floor)", f"{floor_rate:,.0f} rows/s"),
            ("bulk / one at a time", f"{bulk_rate / single_rate:.1f}x"),
            ("bulk / floor", f"{bulk_rate / floor_rate:.2f} of the floor"),
        ],
    )


if __name__ == "__main__":
    main()
