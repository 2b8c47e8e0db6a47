"""A preview's count, its dry-run and the selection it freezes are one set (issue 15, item 6)."""

from __future__ import annotations

from workflows_admin.engine import planning
from workflows_admin.workflows.models import BatchItem, InstanceStatus, WorkflowInstance
from workflows_admin.workflows.services import batches
from workflows_admin.workflows.services.batches import commands
from workflows_admin.workflows.services.instances import start_workflows


def test_an_instance_finishing_during_the_preview_leaves_count_dry_run_and_batch_in_agreement(synced, monkeypatch):
    instances = start_workflows("toy", [{"n": i} for i in range(42)], version="1.0.0")
    finisher = instances[0]
    real_dry_run = planning.dry_run

    def a_worker_finishes_one_meanwhile(plan, items, **options):
        items = list(items)
        WorkflowInstance.objects.filter(pk=finisher.pk).update(status=InstanceStatus.COMPLETED, current_step="")
        return real_dry_run(plan, items, **options)

    monkeypatch.setattr(commands, "dry_run", a_worker_finishes_one_meanwhile)
    preview = batches.preview_migration("toy", source="1.0.0", target="2.0.0", freeze=True)
    report = preview.report
    frozen = set(BatchItem.objects.filter(batch_id=int(preview.selection_token)).values_list("instance_id", flat=True))
    assert report["would_migrate"] + report["would_fail"] == report["selected"] == preview.selected_count
    assert preview.selected_count == len(frozen)
    examples = {example["instance"] for example in report.get("examples", [])}
    assert examples <= frozen


def test_an_unfrozen_dry_run_counts_what_it_examined(synced):
    start_workflows("toy", [{"n": i} for i in range(7)], version="1.0.0")
    preview = batches.preview_migration("toy", source="1.0.0", target="2.0.0")
    assert (preview.selected_count, preview.report["would_migrate"], preview.report["sampled"]) == (7, 7, False)
    sampled = batches.preview_migration("toy", source="1.0.0", target="2.0.0", sample_limit=3)
    assert (sampled.selected_count, sampled.report["examined"], sampled.report["sampled"]) == (7, 3, True)
