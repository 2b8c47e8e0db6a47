"""The one reading of a whole number that comes from a user: a CLI argument, a form or query field, a JSON value.

ASCII digits only. int() also reads Arabic-Indic digits ("\\u0665\\u0660" is 50), fullwidth ones, "+5", "5_0", "-0", and
fails with a ValueError on more than 4,300 digits, so the CLI and the dashboard used to read the
same text differently. Everything else is refused with an InvalidInput naming the field.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import InvalidInput

MAX_ID = 2**63 - 1  # PostgreSQL bigint: instance, batch and rollout ids
MAX_INT_COLUMN = 2**31 - 1  # PostgreSQL integer
_DIGITS = re.compile(r"[0-9]+")


def parse_whole_number(value: Any, field: str, *, minimum: int, maximum: int, label: str | None = None) -> int:
    """`value` (an int, or text of ASCII digits with surrounding blanks) as an int from minimum to maximum.

    `label` names the number in the message when the field name alone reads oddly ("batch id").
    """
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        digits = value.strip().lstrip("0") or "0"
        # More digits than the maximum has is out of range: never hand int() a 5,000-digit string.
        number = int(digits) if len(digits) <= len(str(maximum)) else maximum + 1
    if number is not None and minimum <= number <= maximum:
        return number
    raise InvalidInput(
        f"{label or field} must be a whole number from {minimum} to {maximum}, got {_shown(value, number)}",
        field=field,
    )


def _shown(value: Any, number: int | None) -> str:
    """The refused value as the message quotes it: a number as typed, anything else as repr, cut at 40."""
    text = (value.strip() if isinstance(value, str) else str(value)) if number is not None else repr(value)
    return text if len(text) <= 40 else f"{text[:40]}..."


def parse_id(value: Any, field: str, *, label: str | None = None) -> int:
    """A row id typed by a user (instance, batch, rollout): a whole number from 1 up."""
    return parse_whole_number(value, field, minimum=1, maximum=MAX_ID, label=label)
