"""Which version a new start goes to: the current one, or a ramping one for a share of starts."""

from __future__ import annotations

import hashlib
import secrets


def ramp_bucket(workflow: str, start_key: str | None) -> int:
    """A bucket in [0, 100): stable for a start key (so retries land on the same version), random without one."""
    if start_key is None:
        return secrets.randbelow(100)
    digest = hashlib.sha256(f"{workflow}\x00{start_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def choose_version(
    workflow: str, current: str, ramping: str | None, ramp_percent: int, start_key: str | None = None
) -> str:
    if not ramping or ramp_percent <= 0:
        return current
    return ramping if ramp_bucket(workflow, start_key) < ramp_percent else current
