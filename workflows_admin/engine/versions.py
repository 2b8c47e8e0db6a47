"""Semantic versions (https://semver.org), parsed strictly and ordered as versions, not strings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering
from typing import Any

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$",
    re.ASCII,  # \d is 0-9 only: int() would read other scripts' digits as a different version
)


class InvalidVersion(ValueError):
    """A version string that is not a semantic version."""


@total_ordering
@dataclass(frozen=True, slots=True)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str | Version) -> Version:
        if isinstance(text, Version):
            return text
        if not isinstance(text, str):
            raise InvalidVersion(f"version must be a string like '1.2.0', got {type(text).__name__}")
        match = _SEMVER.match(text.strip())
        if not match:
            raise InvalidVersion(
                f"'{text}' is not a semantic version: use MAJOR.MINOR.PATCH, e.g. '2.1.0' or '2.1.0-rc.1'"
            )
        major, minor, patch, pre, _build = match.groups()
        try:
            return cls(int(major), int(minor), int(patch), tuple(pre.split(".")) if pre else ())
        except ValueError:  # a number with more digits than int() converts
            raise InvalidVersion(f"'{text[:40]}...' has a number too long for a version") from None

    def __str__(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return f"{core}-{'.'.join(self.prerelease)}" if self.prerelease else core

    def _prerelease_key(self) -> tuple[Any, ...]:
        # A release sorts after all of its pre-releases; numeric identifiers sort before alphanumeric ones.
        if not self.prerelease:
            return (1,)
        return (0, *((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease))

    def sort_key(self) -> tuple[Any, ...]:
        return (self.major, self.minor, self.patch, self._prerelease_key())

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.sort_key() < other.sort_key()


def parse_version(text: str | Version) -> Version:
    return Version.parse(text)
