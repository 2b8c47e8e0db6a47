"""The authoring API: workflows, their versions and steps, contracts, migrations and patch markers.

Pure Python. A workflow author writes::

    research = Workflow("research-agent")
    v1 = research.version("1.0.0", contract=Contract(required=["topic", "raw_text"]))

    @v1.step("analyze")
    def analyze(ctx): ...

    @research.migration("1.0.0", "2.0.0", step_map={"analyze": "analyze"})
    def upgrade(context): ...

Mistakes that can be seen without running anything (duplicate steps, unknown steps in a mapping, a
migration between unknown versions, a version string that is not a version) raise RegistrationError
when the workflow is declared or registered, so they fail at import or `manage.py check` time.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .contracts import NO_CONTRACT, Contract
from .operations import DeclarationError, Operation, Operations
from .versions import InvalidVersion, Version

# A step handler takes the StepContext and returns the new context, Wait, or a value (maybe awaitable).
type StepHandler = Callable[..., Any]
# A migrator takes the context (a dict) and returns the migrated one.
type Migrator = Callable[[dict[str, Any]], dict[str, Any]]


class RegistrationError(ValueError):
    """A workflow definition that cannot work; the message says which workflow, version or step."""


@dataclass(frozen=True)
class Wait:
    """Returned by a step handler to park the instance until `signal_workflow` delivers a payload."""

    reason: str = "waiting for a signal"


class StepContext(dict[str, Any]):
    """The instance context handed to a handler: a plain dict of the data, plus runtime facts.

    `patched(name)` answers whether this instance takes the new branch of a patch marker.
    """

    def __init__(
        self,
        data: dict[str, Any],
        *,
        instance_id: Any = None,
        workflow: str = "",
        version: str = "",
        step: str = "",
        attempt: int = 1,
        patch_decider: Callable[[str], bool] | None = None,
        known_patches: Iterable[str] = (),
    ):
        super().__init__(data)
        self.instance_id = instance_id
        self.workflow = workflow
        self.version = version
        self.step = step
        self.attempt = attempt
        self._patch_decider = patch_decider
        self._known_patches = frozenset(known_patches)
        self.patch_decisions: dict[str, bool] = {}

    def patched(self, name: str) -> bool:
        if name not in self._known_patches:
            # Patch usage counts only the versions that declare a patch: a check it does not know of
            # would make "0 on the old branch" a lie.
            raise RegistrationError(
                f"patch '{name}' is not declared for workflow '{self.workflow}' version {self.version}: "
                f"declare it with workflow.patch('{name}') and workflow.version('{self.version}', "
                f"patches=('{name}',))"
            )
        if name not in self.patch_decisions:
            self.patch_decisions[name] = bool(self._patch_decider(name)) if self._patch_decider else True
        return self.patch_decisions[name]


@dataclass(frozen=True)
class Step:
    name: str
    handler: Callable[..., Any]
    step_version: str = ""
    max_retries: int | None = None

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)


UPGRADE_POLICIES = ("pinned", "auto")


@dataclass
class VersionDef:
    workflow: WorkflowDef
    version: Version
    contract: Contract = NO_CONTRACT
    description: str = ""
    steps: list[Step] = field(default_factory=list)
    # The patch markers this version's handlers check (ctx.patched refuses any other).
    patches: tuple[str, ...] = ()
    # "pinned": an instance stays on this version until it ends, unless an operator moves it;
    # "auto": at each step boundary it moves to a newer current version a migration path reaches.
    upgrade: str = "pinned"

    @property
    def label(self) -> str:
        return str(self.version)

    @property
    def step_names(self) -> list[str]:
        return [step.name for step in self.steps]

    def add_step[H: Callable[..., Any]](
        self, name: str, handler: H, *, step_version: str = "", max_retries: int | None = None
    ) -> H:
        if not name or not isinstance(name, str):
            raise RegistrationError(f"{self.workflow.name} {self.label}: a step needs a non-empty name")
        if name in self.step_names:
            raise RegistrationError(f"{self.workflow.name} {self.label}: duplicate step '{name}'")
        if not callable(handler):
            raise RegistrationError(f"{self.workflow.name} {self.label}: handler of step '{name}' is not callable")
        if step_version:
            try:
                Version.parse(step_version)
            except InvalidVersion as exc:
                raise RegistrationError(f"{self.workflow.name} {self.label} step '{name}': {exc}") from None
        self.steps.append(Step(name, handler, step_version, max_retries))
        return handler

    def step(
        self, name: str | None = None, *, version: str = "", max_retries: int | None = None
    ) -> Callable[[StepHandler], StepHandler]:
        """Decorator: `@v1.step("analyze")` appends a step; steps run in the order they are declared."""

        def decorate(handler: StepHandler) -> StepHandler:
            return self.add_step(name or handler.__name__, handler, step_version=version, max_retries=max_retries)

        return decorate

    def get_step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"{self.workflow.name} {self.label} has no step '{name}' (steps: {', '.join(self.step_names)})")

    def first_step(self) -> str:
        return self.steps[0].name

    def next_step(self, name: str) -> str | None:
        names = self.step_names
        index = names.index(name)
        return names[index + 1] if index + 1 < len(names) else None


@dataclass
class MigrationDef:
    source: Version
    target: Version
    func: Migrator
    explicit_step_map: dict[str, str]
    step_map: dict[str, str] = field(default_factory=dict)  # completed by WorkflowDef.check()
    # A declared migration: `func` runs these; a batch on PostgreSQL can run them in SQL instead.
    operations: Operations | None = None

    @property
    def label(self) -> str:
        return f"{self.source}->{self.target}"


@dataclass(frozen=True)
class Patch:
    name: str
    description: str = ""


class WorkflowDef:
    def __init__(self, name: str, *, max_retries: int = 3, retry_backoff: float = 2.0, description: str = ""):
        if not name or not isinstance(name, str) or name.strip() != name:
            raise RegistrationError(f"workflow name must be a non-empty string without surrounding spaces: {name!r}")
        self.name = name
        self.description = description
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.versions: dict[Version, VersionDef] = {}
        self.migrations: dict[tuple[Version, Version], MigrationDef] = {}
        self.patches: dict[str, Patch] = {}

    def __repr__(self) -> str:
        return f"<Workflow {self.name} {[str(v) for v in self.sorted_versions()]}>"

    def _parse(self, version: str | Version, what: str = "version") -> Version:
        try:
            return Version.parse(version)
        except InvalidVersion as exc:
            raise RegistrationError(f"workflow '{self.name}' {what}: {exc}") from None

    def version(
        self,
        version: str,
        *,
        contract: Contract | None = None,
        required: Iterable[str] = (),
        schema: dict[str, Any] | None = None,
        description: str = "",
        patches: Iterable[str] = (),
        upgrade: str = "pinned",
    ) -> VersionDef:
        """Declare a version. `patches` names the patch markers its handlers check with ctx.patched();
        `upgrade` is its upgrade policy: "pinned" (the default) or "auto"."""
        parsed = self._parse(version)
        if parsed in self.versions:
            raise RegistrationError(f"workflow '{self.name}': duplicate version {parsed}")
        if isinstance(patches, str):
            raise RegistrationError(f"workflow '{self.name}' version {parsed}: patches must be a list of names")
        if upgrade not in UPGRADE_POLICIES:
            raise RegistrationError(
                f"workflow '{self.name}' version {parsed}: upgrade must be one of {', '.join(UPGRADE_POLICIES)}, "
                f"got {upgrade!r}"
            )
        if contract is None:
            contract = Contract(required=tuple(required), schema=schema) if (required or schema) else NO_CONTRACT
        definition = VersionDef(
            self, parsed, contract, description, patches=tuple(dict.fromkeys(patches)), upgrade=upgrade
        )
        self.versions[parsed] = definition
        return definition

    def migration(
        self, source: str, target: str, *, step_map: dict[str, str] | None = None
    ) -> Callable[[Migrator], Migrator]:
        """Decorator registering `func(context) -> context` from `source` to `target`.

        `step_map` says on which step of the target an instance at a step of the source resumes;
        steps with the same name in both versions map to themselves unless mapped otherwise.
        """
        src, dst = self._parse(source, "migration source"), self._parse(target, "migration target")
        if src == dst:
            raise RegistrationError(f"workflow '{self.name}': a migration from {src} to itself makes no sense")
        if (src, dst) in self.migrations:
            raise RegistrationError(f"workflow '{self.name}': duplicate migration {src}->{dst}")

        def decorate(func: Migrator) -> Migrator:
            if not callable(func):
                raise RegistrationError(f"workflow '{self.name}': migration {src}->{dst} is not callable")
            self.migrations[(src, dst)] = MigrationDef(src, dst, func, dict(step_map or {}))
            return func

        return decorate

    def declare_migration(
        self, source: str, target: str, *operations: Operation, step_map: dict[str, str] | None = None
    ) -> MigrationDef:
        """Register a migration from `source` to `target` written as operations on the context
        (rename, default, put, drop), applied in order: what it does is known without running it,
        and a batch moves contexts without taking them out of the database."""
        try:
            ops = Operations(operations)
        except DeclarationError as exc:
            raise RegistrationError(f"workflow '{self.name}': migration {source}->{target}: {exc}") from None
        self.migration(source, target, step_map=step_map)(ops)
        definition = self.migrations[(Version.parse(source), Version.parse(target))]
        definition.operations = ops
        return definition

    def patch(self, name: str, description: str = "") -> Patch:
        if name in self.patches:
            raise RegistrationError(f"workflow '{self.name}': duplicate patch '{name}'")
        self.patches[name] = Patch(name, description)
        return self.patches[name]

    def sorted_versions(self) -> list[Version]:
        return sorted(self.versions)

    def get_version(self, version: str | Version) -> VersionDef:
        parsed = Version.parse(version)
        try:
            return self.versions[parsed]
        except KeyError:
            known = ", ".join(str(v) for v in self.sorted_versions()) or "none"
            raise KeyError(f"workflow '{self.name}' has no version {parsed} in this code (known: {known})") from None

    def check(self) -> None:
        """Validate the whole definition, completing each migration's step map; raise on the first problem."""
        if not self.versions:
            raise RegistrationError(f"workflow '{self.name}' declares no version")
        for definition in self.versions.values():
            if not definition.steps:
                raise RegistrationError(f"workflow '{self.name}' version {definition.label} has no steps")
            for name in definition.patches:
                if name not in self.patches:
                    raise RegistrationError(
                        f"workflow '{self.name}' version {definition.label} checks patch '{name}', which the "
                        f"workflow does not declare: add workflow.patch('{name}')"
                    )
        for migration in self.migrations.values():
            for end in (migration.source, migration.target):
                if end not in self.versions:
                    known = ", ".join(str(v) for v in self.sorted_versions())
                    raise RegistrationError(
                        f"workflow '{self.name}': migration {migration.label} names unknown version {end} "
                        f"(known: {known})"
                    )
            migration.step_map = self._complete_step_map(migration)

    def _complete_step_map(self, migration: MigrationDef) -> dict[str, str]:
        source_steps = self.versions[migration.source].step_names
        target_steps = self.versions[migration.target].step_names
        for from_step, to_step in migration.explicit_step_map.items():
            if from_step not in source_steps:
                raise RegistrationError(
                    f"workflow '{self.name}' migration {migration.label}: step map names unknown step "
                    f"'{from_step}' of {migration.source} (steps: {', '.join(source_steps)})"
                )
            if to_step not in target_steps:
                raise RegistrationError(
                    f"workflow '{self.name}' migration {migration.label}: step map sends '{from_step}' to unknown "
                    f"step '{to_step}' of {migration.target} (steps: {', '.join(target_steps)})"
                )
        mapping = {}
        for step in source_steps:
            if step in migration.explicit_step_map:
                mapping[step] = migration.explicit_step_map[step]
            elif step in target_steps:
                mapping[step] = step
            else:
                raise RegistrationError(
                    f"workflow '{self.name}' migration {migration.label}: step '{step}' of {migration.source} "
                    f"does not exist in {migration.target}; say where it resumes with step_map={{'{step}': ...}}"
                )
        return mapping


# The name authors use.
Workflow = WorkflowDef


class Registry:
    """All workflow definitions known to this process."""

    def __init__(self) -> None:
        self._workflows: dict[str, WorkflowDef] = {}

    def register(self, workflow: WorkflowDef) -> WorkflowDef:
        existing = self._workflows.get(workflow.name)
        if existing is not None and existing is not workflow:
            raise RegistrationError(f"workflow '{workflow.name}' is registered twice (two definitions)")
        workflow.check()
        self._workflows[workflow.name] = workflow
        return workflow

    def unregister(self, name: str) -> None:
        self._workflows.pop(name, None)

    def get(self, name: str) -> WorkflowDef:
        try:
            return self._workflows[name]
        except KeyError:
            known = ", ".join(sorted(self._workflows)) or "none"
            raise KeyError(f"unknown workflow '{name}' (known: {known})") from None

    def find_version(self, name: str, version: str | Version) -> VersionDef | None:
        workflow = self._workflows.get(name)
        if workflow is None:
            return None
        try:
            return workflow.versions.get(Version.parse(version))
        except InvalidVersion:
            return None

    def __contains__(self, name: str) -> bool:
        return name in self._workflows

    def __iter__(self) -> Iterator[WorkflowDef]:
        return iter(sorted(self._workflows.values(), key=lambda w: w.name))
