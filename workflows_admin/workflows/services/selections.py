"""Acting on a hand-picked set of instances (the Django admin's actions): one batch per source, not one
per instance, launched to the workers like any other batch instead of processed inside the request."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Max

from ..models import BatchItem, MigrationBatch, WorkflowInstance
from . import batches
from .audit import Actor
from .errors import ServiceError


@dataclass
class SelectionOutcome:
    """The batches started, and what was refused: (instance ids, reason) per refusal."""

    batches: list[MigrationBatch] = field(default_factory=list)
    refused: list[tuple[list[int], str]] = field(default_factory=list)

    def refuse_unmovable(self, by_status: dict[str, list[int]]) -> None:
        for status, ids in sorted(by_status.items()):
            self.refused.append((ids, f"{status}; only in-flight or failed instances move"))


def _ids(instance_ids: Iterable[Any]) -> list[int]:
    return sorted({int(pk) for pk in instance_ids})


def migrate_selected(instance_ids: Iterable[Any], target: str, *, actor: Actor = None) -> SelectionOutcome:
    """Migrate the instances to `target`: one frozen batch per (workflow, source version) among them,
    holding exactly the selected instances that can move."""
    outcome = SelectionOutcome()
    groups: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    rows = WorkflowInstance.objects.filter(pk__in=_ids(instance_ids)).order_by("pk")
    unmovable: dict[str, list[int]] = defaultdict(list)
    for pk, status, workflow, source in rows.values_list("pk", "status", "workflow__name", "version__version"):
        if status in batches.MIGRATABLE_STATUSES:
            groups[(workflow, source)].append((pk, status))
        else:
            unmovable[status].append(pk)
    outcome.refuse_unmovable(unmovable)
    for (workflow, source), members in sorted(groups.items()):
        ids = [pk for pk, _status in members]
        try:
            outcome.batches.append(
                batches.start_migration(
                    workflow,
                    source=source,
                    target=target,
                    selection={"ids": ids, "statuses": sorted({status for _pk, status in members})},
                    actor=actor,
                    freeze=True,
                )
            )
        except ServiceError as error:
            outcome.refused.append((ids, f"{workflow} {source}: {error.message}"))
    return outcome


def rollback_selected(instance_ids: Iterable[Any], *, actor: Actor = None, force: bool = False) -> SelectionOutcome:
    """Undo the last migration of each instance: one rollback batch per migration batch they came from."""
    outcome = SelectionOutcome()
    statuses = dict(WorkflowInstance.objects.filter(pk__in=_ids(instance_ids)).values_list("pk", "status"))
    last_items = (
        BatchItem.objects.filter(instance_id__in=list(statuses), state=BatchItem.State.SUCCEEDED)
        .order_by()
        .values("instance_id")
        .annotate(last=Max("id"))
        .values("last")
    )
    last_change = {
        pk: (batch_id, kind)
        for pk, batch_id, kind in BatchItem.objects.filter(pk__in=last_items).values_list(
            "instance_id", "batch_id", "batch__kind"
        )
    }
    by_batch: dict[int, list[int]] = defaultdict(list)
    unmovable: dict[str, list[int]] = defaultdict(list)
    never_migrated = []
    for pk, status in sorted(statuses.items()):
        batch_id, kind = last_change.get(pk, (None, None))
        if status not in batches.MIGRATABLE_STATUSES:
            unmovable[status].append(pk)
        elif kind != MigrationBatch.Kind.MIGRATE:
            never_migrated.append(pk)
        else:
            assert batch_id is not None  # a migration item always names its batch
            by_batch[batch_id].append(pk)
    outcome.refuse_unmovable(unmovable)
    if never_migrated:
        outcome.refused.append((never_migrated, "no migration to roll back (their last change was not one)"))
    for batch_id, members in sorted(by_batch.items()):
        try:
            outcome.batches.append(batches.start_rollback(batch_id, actor=actor, force=force, instance_ids=members))
        except ServiceError as error:
            outcome.refused.append((members, f"batch #{batch_id}: {error.message}"))
    return outcome
