"""One batch at a time per source version: the others wait, queued, in the order they came.

A batch holds its source version's place while it is unfinished (pending, running or paused; a
paused one too, so what is queued behind it waits for it to be resumed and finish, or cancelled).
Starting a batch while another holds the place queues it; when the one holding it finishes (the
executor's finish) or is cancelled, the first queued batch of that version is launched in the same
transaction. Two transactions deciding for one version take a transaction-level advisory lock on
it first, so two batches started at once never both run, and a queue is never launched twice.
"""

from __future__ import annotations

from django.db import connection
from django.db.models import Q, QuerySet
from django.utils import timezone

from ...models import MigrationBatch
from .. import audit
from ..audit import Actor

State = MigrationBatch.State
# The advisory lock's first key: this lock's namespace (ASCII "BQ"); the second is the version id.
LOCK_NAMESPACE = 0x4251


def lock_source(version_id: int | None) -> None:
    """Serialise queue decisions for one source version until the transaction ends (PostgreSQL;
    SQLite runs one writer at a time anyway)."""
    if version_id is not None and connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [LOCK_NAMESPACE, version_id])


def holding(version_id: int | None) -> QuerySet[MigrationBatch]:
    """The batches that hold a source version's place: the unfinished ones (the one condition both
    the start and the launch of the next decide on)."""
    # An auto-upgrade batch runs for as long as its version auto-upgrades: it holds no place.
    return MigrationBatch.objects.filter(
        source_version_id=version_id, state__in=MigrationBatch.ACTIVE_STATES, auto_upgrade=False
    )


def holder(batch: MigrationBatch) -> MigrationBatch | None:
    """The unfinished batch over the same source version that this one waits for, if any."""
    if batch.source_version_id is None:
        return None
    return holding(batch.source_version_id).exclude(pk=batch.pk).order_by("pk").first()


def _ahead(batch: MigrationBatch) -> QuerySet[MigrationBatch]:
    """The queued batches of the same source version before this one (queue order: queued_at, id)."""
    return MigrationBatch.objects.filter(source_version_id=batch.source_version_id, state=State.QUEUED).filter(
        Q(queued_at__lt=batch.queued_at) | Q(queued_at=batch.queued_at, pk__lt=batch.pk)
    )


def queue_place(batch: MigrationBatch) -> int | None:
    """1 for the next batch to start over its source version, 2 for the one after it...; None unless queued."""
    if batch.state != State.QUEUED or batch.queued_at is None:
        return None
    return _ahead(batch).count() + 1


def start_or_queue(batch: MigrationBatch, actor: Actor, action: str, message: str) -> MigrationBatch:
    """Launch the batch, or queue it (last) behind the unfinished batch over its source version.
    The caller holds a transaction and the batch (new, or locked)."""
    from .commands import launch  # commands imports the executor, which imports this module

    lock_source(batch.source_version_id)
    before = holder(batch)
    if before is None:
        return launch(batch, actor, action, message)
    batch.state = State.QUEUED
    batch.queued_at = timezone.now()
    batch.save(update_fields=["state", "queued_at"])
    place = queue_place(batch)
    audit.record(
        "batch.queued",
        actor=actor,
        workflow_id=batch.workflow_id,
        version_id=batch.source_version_id,
        batch=batch,
        message=f"{message}: queued, place {place}"
        + (f", behind batch #{before.pk} ({before.state})" if before else "")
        + f"; it starts when the batches before it over {batch.source_version} finish",
        details={"place": place, "behind": before.pk if before else None, "action": action},
    )
    return batch


def launch_next(version_id: int | None, *, actor: Actor = "system:batches") -> MigrationBatch | None:
    """The batch holding this source version's place finished or was cancelled: launch the first
    queued one, in the caller's transaction, unless another unfinished batch holds the place."""
    from .commands import launch, launch_action  # see start_or_queue

    if version_id is None:
        return None
    lock_source(version_id)
    if holding(version_id).exists():
        return None
    # Locked: a cancel of a queued batch holds its row, and then this one is passed over when it commits.
    following = (
        MigrationBatch.objects.select_for_update(of=("self",))
        .select_related("source_version")
        .filter(source_version_id=version_id, state=State.QUEUED)
        .order_by("queued_at", "pk")
        .first()
    )
    if following is None:
        return None
    return launch(
        following,
        actor,
        launch_action(following),
        f"{following.get_kind_display().lower()} of {following.total} instance(s) started: the batches "
        f"before it over {following.source_version} finished",
    )
