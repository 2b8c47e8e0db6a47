"""What each batch and version action allows, decided in one place.

Pure functions of the rows (and of facts the caller has read: counts, sibling versions): no query
(but a user's permissions, which Django caches on the user), no write. The services call them under
their row locks and raise the verdict's reason as the Conflict; the dashboard calls them to show a
button exactly when the service would accept it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from .models import MigrationBatch, WorkflowVersion
from .permissions import APPROVE
from .services.audit import actor_user
from .services.errors import Conflict

BatchState = MigrationBatch.State
VersionState = WorkflowVersion.State


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str = ""
    field: str | None = None  # the input a refusal is about, when it is not the subject itself

    def __bool__(self) -> bool:
        return self.allowed

    def require(self, *, field: str) -> None:
        """Raise the refusal as the Conflict a service answers with; nothing happens when allowed."""
        if not self.allowed:
            raise Conflict(self.reason, field=self.field or field)


ALLOWED = Verdict(True)


def _refused(reason: str, field: str | None = None) -> Verdict:
    return Verdict(False, reason, field)


# --- batches --------------------------------------------------------------------------------------
def can_pause(batch: MigrationBatch) -> Verdict:
    # A queued batch holds no place to pause in: pausing a running batch keeps the batches queued
    # behind it waiting, which is what pausing is for; a queued one is cancelled instead.
    if batch.state == BatchState.QUEUED:
        return _refused(
            f"batch #{batch.pk} is queued behind an unfinished batch over {batch.source_version}; a queued batch "
            "cannot be paused: cancel it, or pause it once it runs"
        )
    if batch.state != BatchState.RUNNING:
        return _refused(f"batch #{batch.pk} is {batch.state}; only a running batch can be paused")
    return ALLOWED


def can_resume(batch: MigrationBatch) -> Verdict:
    if batch.state != BatchState.PAUSED:
        return _refused(f"batch #{batch.pk} is {batch.state}; only a paused batch can be resumed")
    return ALLOWED


def can_cancel(batch: MigrationBatch) -> Verdict:
    if batch.is_finished:
        return _refused(f"batch #{batch.pk} is already {batch.state}")
    return ALLOWED


def can_rollback(batch: MigrationBatch, *, undone: int | None = None, under_way: int | None = None) -> Verdict:
    """A migration batch that is not running (finished, paused or cancelled) can be rolled back.

    `undone` (instances its rollbacks restored) and `under_way` (a rollback of it not finished) are
    known to a caller that read them; the service finds the same from the items themselves.
    """
    if batch.kind != MigrationBatch.Kind.MIGRATE:
        return _refused(f"batch #{batch.pk} is a rollback; roll back a migration batch")
    if batch.state in (BatchState.AWAITING_APPROVAL, BatchState.QUEUED):
        return _refused(f"batch #{batch.pk} is {batch.state} and has migrated nothing yet; cancel it instead")
    if batch.state in (BatchState.RUNNING, BatchState.PENDING, BatchState.DRAFT):
        return _refused(
            f"batch #{batch.pk} is {batch.state}; pause or cancel it, or let it finish, before rolling it back"
        )
    if batch.source_version is not None and batch.source_version.state == VersionState.RETIRED:
        return _refused(
            f"{batch.source_version} is retired and takes no instances: batch #{batch.pk} cannot be rolled back "
            "onto it; migrate its instances to a live version instead"
        )
    if under_way is not None:
        return _refused(
            f"batch #{batch.pk} is already being rolled back by batch #{under_way}; resume or cancel that one"
        )
    if undone is not None and batch.succeeded <= undone:
        return _refused(f"batch #{batch.pk} has no migrated instance left to roll back")
    return ALLOWED


def can_retry_failed(batch: MigrationBatch, *, retried: int | None = None, under_way: int | None = None) -> Verdict:
    """A finished migration's failures can be migrated again, as a child batch.

    `retried` (failed instances its retries migrated) and `under_way` (a retry not finished), as for
    can_rollback.
    """
    if batch.kind != MigrationBatch.Kind.MIGRATE or not batch.is_finished:
        return _refused(f"batch #{batch.pk} must be a finished migration to retry its failures")
    if under_way is not None:
        return _refused(
            f"batch #{batch.pk}'s failures are already being retried by batch #{under_way}; resume or cancel that one"
        )
    if retried is not None and batch.failed <= retried:
        return _refused(f"batch #{batch.pk} has no failed instance left to retry")
    return ALLOWED


def approval_threshold() -> int:
    """Batches over this many instances need a second user's approval; 0 turns four eyes off."""
    return max(settings.WORKFLOWS_APPROVAL_THRESHOLD, 0)


def approval_needed(total: int) -> bool:
    """Whether a batch of `total` instances waits for a second user (the preview says so up front)."""
    threshold = approval_threshold()
    return bool(threshold) and total > threshold


def needs_approval(batch: MigrationBatch) -> bool:
    return approval_needed(batch.total)


def approval_expires_at(batch: MigrationBatch) -> datetime:
    """An approval request expires with its preview: WORKFLOWS_DRAFT_HOURS after the batch was made."""
    return batch.created_at + timedelta(hours=settings.WORKFLOWS_DRAFT_HOURS)


def _same_person(label: str, user: Any) -> bool:
    """The requester's audit name (`alice`, or `cli:alice` from the command line) is this user's."""
    name = label.removeprefix("cli:")
    return bool(name) and name == user.get_username()


def can_approve(batch: MigrationBatch, user: Any) -> Verdict:
    """A second user with approve_migrations approves a batch awaiting approval, before it expires.

    The requester (who confirmed or started it) and whoever previewed it are refused: four eyes.
    """
    if batch.state != BatchState.AWAITING_APPROVAL:
        return _refused(f"batch #{batch.pk} is {batch.state}; only a batch awaiting approval can be approved")
    if actor_user(user) is None or not user.has_perm(APPROVE):
        return _refused(f"approving batch #{batch.pk} needs the permission approve_migrations")
    if _same_person(batch.requested_by, user) or batch.created_by_id == user.pk:
        did = "requested" if _same_person(batch.requested_by, user) else "previewed"
        return _refused(
            f"{user.get_username()} {did} batch #{batch.pk} and cannot approve it; a second user with "
            "approve_migrations must (four eyes)"
        )
    if timezone.now() >= approval_expires_at(batch):
        return _refused(
            f"the approval request of batch #{batch.pk} expired at {approval_expires_at(batch):%Y-%m-%d %H:%M} UTC "
            f"(WORKFLOWS_DRAFT_HOURS={settings.WORKFLOWS_DRAFT_HOURS}); preview and confirm it again"
        )
    return ALLOWED


def can_reject(batch: MigrationBatch, user: Any) -> Verdict:
    """A user with approve_migrations may reject a batch awaiting approval (its requester cancels it)."""
    if batch.state != BatchState.AWAITING_APPROVAL:
        return _refused(f"batch #{batch.pk} is {batch.state}; only a batch awaiting approval can be rejected")
    if actor_user(user) is None or not user.has_perm(APPROVE):
        return _refused(f"rejecting batch #{batch.pk} needs the permission approve_migrations")
    return ALLOWED


def can_force_conflicts(
    batch: MigrationBatch, *, left_to_undo: int | None = None, under_way: int | None = None
) -> Verdict:
    """A finished rollback whose instances moved on (conflicts) can roll those back again with force.

    `left_to_undo` and `under_way` are its migration's (the parent's), as can_rollback takes them.
    """
    if batch.kind != MigrationBatch.Kind.ROLLBACK or batch.parent_id is None:
        return _refused(f"batch #{batch.pk} is not a rollback")
    if not batch.is_finished:
        return _refused(f"batch #{batch.pk} is {batch.state}; let it finish first")
    if batch.force:
        return _refused(f"batch #{batch.pk} was already forced")
    if not batch.conflicts:
        return _refused(f"batch #{batch.pk} has no conflict to force")
    if under_way is not None:
        return _refused(f"migration #{batch.parent_id} is being rolled back by batch #{under_way}; let it finish first")
    if left_to_undo is not None and left_to_undo <= 0:
        return _refused(f"migration #{batch.parent_id} has no migrated instance left to roll back")
    return ALLOWED


# --- versions -------------------------------------------------------------------------------------
def can_make_current(version: WorkflowVersion) -> Verdict:
    if version.state == VersionState.CURRENT:
        return _refused(f"{version} is already current")
    if version.state == VersionState.RETIRED:
        return _refused(f"{version} is retired; a retired version cannot become current")
    if not version.has_code:
        return _refused(f"{version} has no code in this deployment; deploy it before making it current")
    return ALLOWED


def can_drain(version: WorkflowVersion) -> Verdict:
    if version.state == VersionState.CURRENT:
        return _refused(f"{version} is current; make another version current first, then it drains")
    if version.state in (VersionState.DRAINING, VersionState.DRAINED, VersionState.RETIRED):
        return _refused(f"{version} is already {version.state}")
    return ALLOWED


def can_acknowledge_shape(version: WorkflowVersion) -> Verdict:
    """A shape change recorded by sync (code changed under the label with instances in flight) can be
    acknowledged: the operator says the new code runs the old instances."""
    if not version.shape_change:
        return _refused(f"{version} has no shape change to acknowledge")
    return ALLOWED


def warm_versions(versions) -> set[int]:
    """The newest WORKFLOWS_WARM_VERSIONS versions older than the current one that have code: rollback targets."""
    versions = list(versions)
    current = next((v for v in versions if v.state == VersionState.CURRENT), None)
    if current is None:
        return set()
    older = sorted(
        (v for v in versions if v.has_code and v.state != VersionState.RETIRED and v.parsed < current.parsed),
        key=lambda v: v.parsed,
        reverse=True,
    )
    return {v.pk for v in older[: settings.WORKFLOWS_WARM_VERSIONS]}


def can_retire(version: WorkflowVersion, *, in_flight: int, warm: bool) -> Verdict:
    """`warm`: the version is one of the newest before the current one, kept as a rollback target."""
    if version.state == VersionState.RETIRED:
        return _refused(f"{version} is already retired")
    if version.state in (VersionState.CURRENT, VersionState.RAMPING):
        return _refused(f"{version} is {version.state}; make another version current before retiring it")
    if in_flight:
        return _refused(f"{version} still has {in_flight} instance(s) in flight; migrate them or let them finish first")
    if warm:
        return _refused(
            f"{version} is kept warm as a rollback target: the {settings.WORKFLOWS_WARM_VERSIONS} newest "
            "versions before the current one keep their code and can take instances back; it can be retired "
            "once newer releases push it out (WORKFLOWS_WARM_VERSIONS)"
        )
    return ALLOWED


def can_ramp(
    version: WorkflowVersion, *, other_ramping: WorkflowVersion | None, ramp_percent: int, percent: int | None = None
) -> Verdict:
    """`other_ramping`: another version of the workflow ramping now (at `ramp_percent`); `percent`, the
    share asked for, when known (0 stops a ramp, which needs one)."""
    if version.state == VersionState.CURRENT:
        return _refused(f"{version} is current and takes every start not sent to a ramp; it cannot ramp")
    if version.state == VersionState.RETIRED:
        return _refused(f"{version} is retired; a retired version cannot ramp")
    if not version.has_code:
        return _refused(f"{version} has no code in this deployment; deploy it before ramping")
    if other_ramping is not None:
        return _refused(f"{other_ramping} is already ramping at {ramp_percent}%; set its ramp to 0 first")
    if percent == 0 and version.state != VersionState.RAMPING:
        return _refused(f"{version} is not ramping; there is no ramp to stop", field="percent")
    return ALLOWED
