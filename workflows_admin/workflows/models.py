"""The state: versions as registered, instances, step runs, migration batches and the audit log.

Models hold data and constraints only; every write that changes an instance goes through a service
(workflows_admin.workflows.services) in a transaction under a row lock or a revision check.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from workflows_admin.engine import Version


class Workflow(models.Model):
    class StalePolicy(models.TextChoices):
        REPORT = "report", "Only report"
        EXPIRE = "expire", "Force-complete (expired)"
        MIGRATE = "migrate", "Migrate to the current version"

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    ramp_percent = models.PositiveSmallIntegerField(
        default=0, help_text="Share of new starts sent to the ramping version"
    )
    max_lifetime = models.DurationField(null=True, blank=True, help_text="Instances older than this are stale")
    stale_policy = models.CharField(max_length=16, choices=StalePolicy, default=StalePolicy.REPORT)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class WorkflowVersion(models.Model):
    class State(models.TextChoices):
        ACTIVE = "active", "Active"  # registered, serves instances stamped with it, no new starts
        CURRENT = "current", "Current"  # receives new starts
        RAMPING = "ramping", "Ramping"  # receives a share of new starts
        DRAINING = "draining", "Draining"  # no longer current, instances still in flight
        DRAINED = "drained", "Drained"  # no instance in flight; can be retired
        RETIRED = "retired", "Retired"  # takes nothing any more

    workflow = models.ForeignKey(Workflow, on_delete=models.PROTECT, related_name="versions")
    version = models.CharField(max_length=64)
    # Numeric parts, so the database can order versions as versions.
    major = models.PositiveIntegerField(default=0)
    minor = models.PositiveIntegerField(default=0)
    patch = models.PositiveIntegerField(default=0)
    prerelease = models.CharField(max_length=64, blank=True)
    state = models.CharField(max_length=16, choices=State, default=State.ACTIVE)
    description = models.TextField(blank=True)
    steps = models.JSONField(default=list, help_text="[{name, step_version}] as last registered")
    contract = models.JSONField(default=dict, blank=True)
    patches = models.JSONField(default=list, blank=True, help_text="Patch markers its code checks, as last registered")
    has_code = models.BooleanField(default=True, help_text="The code registry of the last sync defines it")
    # Old instances must not silently run on new code: sync compares the code's shape (steps,
    # contract) with the one first registered under this label, and records a change found while
    # instances were in flight (re-baselined once none are).
    registered_shape = models.JSONField(
        default=dict, blank=True, db_default={}, help_text="Steps, contract and patches as first registered"
    )
    shape_change = models.JSONField(
        default=dict,
        blank=True,
        db_default={},
        help_text="The code's shape changed under this label while instances were in flight: {changes, in_flight, at}",
    )
    code_missing_since = models.DateTimeField(null=True, blank=True)
    code_missing_reason = models.TextField(blank=True)
    max_lifetime = models.DurationField(null=True, blank=True, help_text="Overrides the workflow's")
    stale_policy = models.CharField(max_length=16, choices=Workflow.StalePolicy, blank=True)
    registered_at = models.DateTimeField(auto_now_add=True)
    state_changed_at = models.DateTimeField(null=True, blank=True)
    drained_at = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class UpgradePolicy(models.TextChoices):
        PINNED = "pinned", "Pinned: instances stay until they end, unless an operator moves them"
        AUTO = "auto", "Auto-upgrade: instances move to the current version at their next step boundary"

    upgrade_policy = models.CharField(
        max_length=8, choices=UpgradePolicy, default=UpgradePolicy.PINNED, db_default=UpgradePolicy.PINNED
    )
    # Set while the policy is auto and a newer current version is reachable by a migration path: the
    # step boundaries of this version's instances then move them there (services/upgrades.py).
    upgrade_to = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )

    class Meta:
        ordering = ["workflow__name", "major", "minor", "patch", "prerelease"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "version"], name="unique_workflow_version"),
            models.UniqueConstraint(
                fields=["workflow"], condition=Q(state="current"), name="one_current_version_per_workflow"
            ),
            models.UniqueConstraint(
                fields=["workflow"], condition=Q(state="ramping"), name="one_ramping_version_per_workflow"
            ),
        ]
        permissions = [
            ("view_dashboard", "Can view the operator dashboard"),
            ("migrate_instances", "Can migrate instances between versions"),
            ("rollback_instances", "Can roll back migrations"),
            ("change_lifecycle", "Can change version lifecycle and routing"),
            ("operate_instances", "Can signal, cancel or force-complete instances"),
            ("manage_rollouts", "Can start, pause, resume, abort or promote rollouts"),
            ("approve_migrations", "Can approve or reject another user's large migration, rollback or cleanup"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow.name} {self.version}"

    @property
    def parsed(self) -> Version:
        return Version.parse(self.version)

    @property
    def step_names(self) -> list[str]:
        return [step["name"] for step in self.steps]


class InstanceStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    WAITING = "waiting", "Waiting"
    PARKED = "parked", "Parked"  # a worker lacked the version's code; resumes when code returns
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    EXPIRED = "expired", "Expired"


IN_FLIGHT_STATUSES = (InstanceStatus.PENDING, InstanceStatus.RUNNING, InstanceStatus.WAITING, InstanceStatus.PARKED)
TERMINAL_STATUSES = (
    InstanceStatus.COMPLETED,
    InstanceStatus.FAILED,
    InstanceStatus.CANCELLED,
    InstanceStatus.EXPIRED,
)


class WorkflowInstance(models.Model):
    # workflow, version and created_at have no index of their own: every query on them also filters
    # on the columns the composite indexes below lead with. A migration rewrites version_id, so each
    # index is written again for every row moved; and with statistics taken mid-migration the planner
    # walked a lone created_at index through the whole table for "oldest in flight" (1.2 s a probe).
    workflow = models.ForeignKey(Workflow, on_delete=models.PROTECT, related_name="instances", db_index=False)
    version = models.ForeignKey(WorkflowVersion, on_delete=models.PROTECT, related_name="instances", db_index=False)
    status = models.CharField(max_length=16, choices=InstanceStatus, default=InstanceStatus.PENDING)
    current_step = models.CharField(max_length=200, blank=True, help_text="The step to run next, or waiting on")
    context = models.JSONField(default=dict)
    # Bumped by every write; a write computed against an older revision is refused.
    revision = models.PositiveBigIntegerField(default=1)
    attempt = models.PositiveIntegerField(default=0, help_text="Failed attempts of the current step")
    start_key = models.CharField(max_length=200, blank=True)
    status_reason = models.TextField(blank=True, help_text="Why it waits, is parked, failed or expired")
    patches = models.JSONField(default=dict, blank=True, help_text="Patch markers seen: name -> new branch taken")
    lease_expires_at = models.DateTimeField(null=True, blank=True, help_text="While running: the claim's lease")
    # A batch reached this instance while its step ran: the move waits for the step's result (a
    # deferred item) and is applied in the transaction that records it. The step's result write is
    # refused while this is set, so it goes through batches.safe_points instead.
    move_pending = models.BooleanField(default=False, db_default=False)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            # Also serves "oldest in flight" per version: one probe per (version, status).
            models.Index(fields=["version", "status", "created_at"], name="instance_version_status_age"),
            models.Index(fields=["workflow", "status"], name="instance_workflow_status"),
            models.Index(fields=["status", "updated_at"], name="instance_status_updated"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.workflow_id}@{self.version_id} {self.status}"

    @property
    def in_flight(self) -> bool:
        return self.status in IN_FLIGHT_STATUSES


class InstanceCount(models.Model):
    """Instances per (version, status, current step), kept exact by database triggers (see
    counters.py); read by summing shards (and steps, for counts per status)."""

    version = models.ForeignKey(WorkflowVersion, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=16, choices=InstanceStatus)
    current_step = models.CharField(max_length=200, default="")
    shard = models.SmallIntegerField()
    n = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["version", "status", "current_step", "shard"], name="unique_instance_count_step_shard"
            )
        ]

    def __str__(self) -> str:
        return f"{self.version_id}/{self.status}/{self.current_step}/{self.shard}: {self.n}"


class StepRun(models.Model):
    """One finished attempt at a step (a running step shows on its instance: status running, lease)."""

    class Outcome(models.TextChoices):
        SUCCEEDED = "succeeded", "Succeeded"
        WAITING = "waiting", "Waiting for a signal"
        RETRYING = "retrying", "Failed, will retry"
        FAILED = "failed", "Failed"
        DISCARDED = "discarded", "Discarded (instance changed meanwhile)"
        ABANDONED = "abandoned", "Abandoned (worker lost its lease)"
        PARKED = "parked", "Parked (no code for the version)"

    instance = models.ForeignKey(WorkflowInstance, on_delete=models.CASCADE, related_name="step_runs")
    version = models.ForeignKey(WorkflowVersion, on_delete=models.PROTECT, related_name="step_runs")
    step = models.CharField(max_length=200)
    step_version = models.CharField(max_length=64, blank=True)
    attempt = models.PositiveIntegerField(default=1)
    claim_revision = models.PositiveBigIntegerField(help_text="The instance revision this run's claim created")
    outcome = models.CharField(max_length=16, choices=Outcome)
    error = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["instance", "claim_revision"], name="steprun_instance_claim"),
            models.Index(fields=["version", "outcome"], name="steprun_version_outcome"),
        ]

    def __str__(self) -> str:
        return f"{self.step} #{self.attempt} of instance {self.instance_id}: {self.outcome}"

    # The columns a step's result statement inserts (an INSERT ... SELECT inside a CTE, see steps.py).
    INSERTED = (
        "instance_id",
        "version_id",
        "step",
        "step_version",
        "attempt",
        "claim_revision",
        "worker",
        "started_at",
        "finished_at",
        "outcome",
        "error",
    )

    def inserted_values(self) -> list:
        return [getattr(self, column) for column in self.INSERTED]


class MigrationBatch(models.Model):
    class Kind(models.TextChoices):
        MIGRATE = "migrate", "Migration"
        ROLLBACK = "rollback", "Rollback"

    class State(models.TextChoices):
        DRAFT = "draft", "Previewed, awaiting confirmation"  # the selection is frozen, nothing changed yet
        # Over WORKFLOWS_APPROVAL_THRESHOLD instances: a second user approves it (four eyes) or it expires.
        AWAITING_APPROVAL = "awaiting_approval", "Awaiting approval"
        # Another batch over the same source version is unfinished: this one starts when it finishes.
        QUEUED = "queued", "Queued"
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        PAUSED = "paused", "Paused"
        COMPLETED = "completed", "Completed"
        COMPLETED_WITH_FAILURES = "completed_with_failures", "Completed with failures"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED_STATES = (State.COMPLETED, State.COMPLETED_WITH_FAILURES, State.CANCELLED)
    # Batches that hold their source version's place: the next queued one waits until none is left.
    ACTIVE_STATES = (State.PENDING, State.RUNNING, State.PAUSED)

    workflow = models.ForeignKey(Workflow, on_delete=models.PROTECT, related_name="batches")
    kind = models.CharField(max_length=16, choices=Kind, default=Kind.MIGRATE)
    source_version = models.ForeignKey(
        WorkflowVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="batches_out"
    )
    target_version = models.ForeignKey(
        WorkflowVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="batches_in"
    )
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="children",
        help_text="For a rollback: the batch it undoes",
    )
    selection = models.JSONField(default=dict, blank=True, help_text="The filter the operator chose")
    plan = models.JSONField(default=dict, blank=True, help_text="Path and step map at creation")
    state = models.CharField(max_length=32, choices=State, default=State.PENDING)
    force = models.BooleanField(default=False, help_text="Rollback: overwrite instances that moved on")
    reopen_finished = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Rollback: also restore instances that completed or were cancelled since their migration",
    )
    max_wait_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="How long an instance whose step is running is waited for (empty: until its step ends)",
    )

    class OnMaxWait(models.TextChoices):
        SKIP = "skip", "Skip: leave the instance where it is"
        INTERRUPT = "interrupt", "Interrupt: move it now; its running step's result is discarded"

    on_max_wait = models.CharField(max_length=16, choices=OnMaxWait, default=OnMaxWait.SKIP, db_default="skip")
    # A version's auto-upgrade batch: instances join it as they move at their step boundaries (or
    # in the sweep of waiting ones); it stays running while the version has instances to move.
    auto_upgrade = models.BooleanField(default=False, db_default=False)
    chunk_size = models.PositiveIntegerField(default=500)
    not_before = models.DateTimeField(null=True, blank=True, help_text="Scheduled start (maintenance window)")
    rate_limit = models.PositiveIntegerField(null=True, blank=True, help_text="At most this many instances a second")
    next_chunk_at = models.DateTimeField(
        null=True, blank=True, help_text="Rate limit: the next chunk is not taken before this"
    )
    canary_size = models.PositiveIntegerField(null=True, blank=True, help_text="Migrate this many first, then check")
    canary_max_failure_rate = models.FloatField(
        null=True,
        blank=True,
        help_text="Continue after the canary only if its failure share is at most this (0-1); "
        "empty: always pause for review",
    )
    total = models.PositiveIntegerField(default=0)
    # A live selection (a migration started without a preview): instances up to this id, taken when
    # their turn comes if they still match; the total is counted at the start and settled at the end.
    # Empty: the selection was frozen as pending items (a preview, a retry, a rollback).
    selection_upto = models.BigIntegerField(null=True, blank=True)
    succeeded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0, help_text="Changed since the preview or no longer eligible")
    conflicts = models.PositiveIntegerField(default=0)
    deferred = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Instances whose running step is waited for before they move"
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    requested_by = models.CharField(
        max_length=200,
        blank=True,
        db_default="",
        help_text="Who asked for the approval, as the audit log names them (a user, cli:<user>, system:<task>)",
    )
    queued_at = models.DateTimeField(null=True, blank=True, help_text="When it joined its source version's queue")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    progressed_at = models.DateTimeField(null=True, blank=True, help_text="When the last chunk finished")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "migration batches"
        constraints = [
            models.UniqueConstraint(
                fields=["source_version", "target_version"],
                condition=models.Q(auto_upgrade=True, state="running"),
                name="one_running_auto_upgrade_batch",
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.state})"

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed + self.skipped + self.conflicts

    @property
    def is_finished(self) -> bool:
        return self.state in self.FINISHED_STATES


class BatchChain(models.Model):
    """One chain of chunk tasks working on a running batch (each task sends its successor).

    Its lease is renewed while a task of the chain runs and held past the successor's due time when
    it hands on. A chain whose lease ran out lost its worker or its task: the resumer retires it and
    starts a new one in its place, and a task of a retired chain that turns up late does nothing.
    The lease is a row of its own, not a column of the batch: a chunk's transaction holds the batch
    row until it commits, and renewing there would wait for the very chunk it vouches for.
    """

    batch = models.ForeignKey(MigrationBatch, on_delete=models.CASCADE, related_name="chains")
    lease_expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"chain {self.pk} of batch {self.batch_id} (lease until {self.lease_expires_at})"


def _item_version() -> models.ForeignKey:
    """The version an item moved its instance from or to (no constraint, no index: see BatchItem)."""
    return models.ForeignKey(
        WorkflowVersion,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )


class BatchItem(models.Model):
    """One instance of a batch: its frozen selection, its outcome and, for migrations, its snapshot.

    One row per (batch, instance) carries all three, so migrating an instance costs one extra write.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Changed since preview"
        CONFLICT = "conflict", "Conflict"
        DEFERRED = "deferred", "Waiting for its running step"

    UNDECIDED = (State.PENDING, State.DEFERRED)

    # Items are written in bulk, 100,000 at a time: their references are kept by the statements that
    # write them (INSERT ... SELECT from the rows referenced) and by Django's on_delete, not by
    # per-row foreign-key triggers. Those cost 6 us per item when a batch is created (a lock on every
    # instance) and two checks per item at each chunk's commit, 12% of a chunk. Indexes: only those
    # queries use; the unique (batch, instance) and (instance, -id) ones serve batch and instance.
    batch = models.ForeignKey(
        MigrationBatch, on_delete=models.CASCADE, related_name="items", db_constraint=False, db_index=False
    )
    instance = models.ForeignKey(
        WorkflowInstance, on_delete=models.CASCADE, related_name="batch_items", db_constraint=False, db_index=False
    )
    undoes = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,  # a partial index below: migration items, the most, have none
        help_text="For a rollback: the migration item whose snapshot it restores",
    )
    state = models.CharField(max_length=16, choices=State, default=State.PENDING)
    expected_revision = models.PositiveBigIntegerField(help_text="Instance revision when selected")
    # Snapshot taken in the same transaction as the change.
    from_version = _item_version()
    from_step = models.CharField(max_length=200, blank=True)
    from_status = models.CharField(max_length=16, blank=True)
    from_context = models.JSONField(null=True, blank=True)
    to_version = _item_version()
    to_step = models.CharField(max_length=200, blank=True)
    revision_after = models.PositiveBigIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True, help_text="When decided (deferred: when deferred)")

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["batch", "instance"], name="unique_batch_instance")]
        indexes = [
            # Partial: an item leaving "pending" for "succeeded" (nearly all) adds no entry to either.
            models.Index(fields=["batch", "id"], name="batchitem_pending", condition=models.Q(state="pending")),
            models.Index(
                fields=["batch", "id"],
                name="batchitem_unsuccessful",
                condition=models.Q(state__in=["failed", "skipped", "conflict"]),
            ),
            models.Index(fields=["instance", "-id"], name="batchitem_instance"),
            models.Index(fields=["undoes"], name="batchitem_undoes", condition=models.Q(undoes__isnull=False)),
            models.Index(fields=["batch", "id"], name="batchitem_deferred", condition=models.Q(state="deferred")),
        ]

    def __str__(self) -> str:
        return f"batch {self.batch_id} instance {self.instance_id}: {self.state}"


class Patch(models.Model):
    """A patch marker as first seen by a deploy; instances started before it take the old branch."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="patches")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    introduced_at = models.DateTimeField()

    class Meta:
        ordering = ["workflow__name", "introduced_at"]
        constraints = [models.UniqueConstraint(fields=["workflow", "name"], name="unique_workflow_patch")]

    def __str__(self) -> str:
        return f"{self.workflow.name}:{self.name}"


class InFlightSample(models.Model):
    """Periodic in-flight counts per version, for the chart on the overview."""

    version = models.ForeignKey(WorkflowVersion, on_delete=models.CASCADE, related_name="samples")
    taken_at = models.DateTimeField(db_index=True)
    in_flight = models.PositiveIntegerField()

    class Meta:
        ordering = ["taken_at"]

    def __str__(self) -> str:
        return f"{self.version_id} at {self.taken_at:%Y-%m-%d %H:%M}: {self.in_flight}"


class AuditEvent(models.Model):
    """Who did what, when: every operator and system action, never stored in the user's context."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_label = models.CharField(max_length=200, help_text="Username, or system:<task> for automatic actions")
    action = models.CharField(max_length=64, db_index=True)
    workflow = models.ForeignKey(Workflow, null=True, blank=True, on_delete=models.SET_NULL)
    version = models.ForeignKey(WorkflowVersion, null=True, blank=True, on_delete=models.SET_NULL)
    instance = models.ForeignKey(WorkflowInstance, null=True, blank=True, on_delete=models.SET_NULL)
    batch = models.ForeignKey(MigrationBatch, null=True, blank=True, on_delete=models.SET_NULL)
    message = models.TextField(blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action}"


class Rollout(models.Model):
    """A progressive rollout of a version: the ramp grows on a schedule while health gates pass."""

    class Strategy(models.TextChoices):
        CANARY = "canary", "Canary: a share, then everything"
        LINEAR = "linear", "Linear: a step more every interval"
        ALL_AT_ONCE = "all_at_once", "All at once"

    class OnBreach(models.TextChoices):
        MIGRATE_BACK = "migrate_back", "Migrate its instances back to the previous version"
        PARK = "park", "Park its instances for an operator"
        KEEP = "keep", "Keep its instances running"

    class State(models.TextChoices):
        RUNNING = "running", "Running"
        PAUSED = "paused", "Paused"
        HALTED = "halted", "Halted by a gate"
        COMPLETED = "completed", "Completed"
        ABORTED = "aborted", "Aborted"

    workflow = models.ForeignKey(Workflow, on_delete=models.PROTECT, related_name="rollouts")
    target_version = models.ForeignKey(WorkflowVersion, on_delete=models.PROTECT, related_name="rollouts")
    previous_version = models.ForeignKey(WorkflowVersion, on_delete=models.PROTECT, related_name="+")
    strategy = models.CharField(max_length=16, choices=Strategy)
    step_percent = models.PositiveSmallIntegerField(default=10, help_text="Linear: added every interval")
    canary_percent = models.PositiveSmallIntegerField(default=10, help_text="Canary: the first share")
    interval_seconds = models.PositiveIntegerField(default=600, help_text="Gates must pass this long to advance")
    gates = models.JSONField(default=list, help_text="[{metric, threshold, min_samples}]")
    on_breach = models.CharField(max_length=16, choices=OnBreach, default=OnBreach.KEEP)
    state = models.CharField(max_length=16, choices=State, default=State.RUNNING)
    current_percent = models.PositiveSmallIntegerField(default=0)
    started_at = models.DateTimeField()
    last_advanced_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    halted_reason = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["workflow"], condition=Q(state__in=["running", "paused"]), name="one_open_rollout_per_workflow"
            )
        ]

    def __str__(self) -> str:
        return f"rollout #{self.pk} of {self.target_version} ({self.state}, {self.current_percent}%)"

    @property
    def is_open(self) -> bool:
        return self.state in (self.State.RUNNING, self.State.PAUSED)


class RolloutEvent(models.Model):
    """The rollout's timeline: every decision with the figures that made it."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField()
    # start, advance, hold, halt, on_breach, on_breach_failed, complete, pause, resume, abort, promote
    decision = models.CharField(max_length=16)
    percent = models.PositiveSmallIntegerField()
    figures = models.JSONField(default=list, blank=True)
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.at:%H:%M:%S} {self.decision} {self.percent}%"
