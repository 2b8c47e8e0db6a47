"""An operator's reason (a rejected batch, a skipped verification, an acknowledged shape change): text a
person reads later in the audit log, so it is required, bounded and storable by PostgreSQL."""

from __future__ import annotations

from typing import Any

from .errors import InvalidInput

MAX_REASON = 2000


def parse_reason(raw: Any, *, field: str, needed: str) -> str:
    """The stripped reason; `needed` says what needs one, e.g. "a rejection needs a reason, for the requester"."""
    reason = raw.strip() if isinstance(raw, str) else ""
    if not reason:
        raise InvalidInput(needed, field=field)
    if len(reason) > MAX_REASON:
        raise InvalidInput(f"the reason is longer than {MAX_REASON} characters", field=field)
    if any(c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF for c in reason):
        raise InvalidInput("the reason holds a NUL character or a lone UTF-16 surrogate", field=field)
    return reason
