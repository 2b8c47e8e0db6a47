"""A dry-run example's diff as the page shows it: one row per key, a renamed key as a rename."""

from __future__ import annotations

import json
from typing import Any

PREVIEW_CHARS = 160  # a longer value shows this much, the whole of it one click away


def _shown(value: Any) -> dict[str, Any]:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return {"text": text, "preview": text[:PREVIEW_CHARS], "long": len(text) > PREVIEW_CHARS, "length": len(text)}


def diff_rows(diff: dict[str, dict]) -> list[dict[str, Any]]:
    """[{"kind": added|removed|renamed|changed, "key", "new_key", "before", "after"}] in key order.

    A key removed while another key was added with the same value is a rename (its value shown
    once), not the whole value removed and added again. Values are compared as JSON text, so True
    and 1 are not taken for each other.
    """
    added = {key: json.dumps(value, sort_keys=True) for key, value in diff.get("added", {}).items()}
    rows = []
    for key, value in sorted(diff.get("removed", {}).items()):
        as_text = json.dumps(value, sort_keys=True)
        new_key = next((new for new in sorted(added) if added[new] == as_text), None)
        if new_key is None:
            rows.append({"kind": "removed", "key": key, "before": _shown(value)})
        else:
            del added[new_key]
            rows.append({"kind": "renamed", "key": key, "new_key": new_key, "before": _shown(value)})
    for key in sorted(added):
        rows.append({"kind": "added", "key": key, "after": _shown(diff["added"][key])})
    for key, change in sorted(diff.get("changed", {}).items()):
        rows.append(
            {"kind": "changed", "key": key, "before": _shown(change["before"]), "after": _shown(change["after"])}
        )
    return sorted(rows, key=lambda row: row["key"])
