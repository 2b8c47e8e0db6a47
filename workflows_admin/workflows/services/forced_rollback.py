"""Rolling back with force the instances a rollback left as conflicts (they moved on since their migration)."""

from __future__ import annotations

from typing import Any

from ..models import BatchItem, MigrationBatch
from ..rules import can_force_conflicts
from . import batches
from .audit import Actor
from .lookup import row_by_id


def roll_back_conflicts(batch_id: Any, *, actor: Actor = None) -> MigrationBatch:
    """A forced rollback, of the same migration, of exactly the instances `batch_id` (a finished
    rollback) reported as conflicts. start_rollback locks the migration and never undoes an instance twice."""
    batch = row_by_id(MigrationBatch.objects.all(), batch_id, "batch")
    # A finished batch never changes again: its verdict needs no lock.
    can_force_conflicts(batch).require(field="batch")
    conflicted = BatchItem.objects.filter(batch=batch, state=BatchItem.State.CONFLICT).values_list(
        "instance_id", flat=True
    )
    assert batch.parent_id is not None  # can_force_conflicts: a rollback, which has its migration as parent
    rollback: MigrationBatch = batches.start_rollback(
        batch.parent_id, actor=actor, force=True, instance_ids=list(conflicted)
    )
    return rollback
