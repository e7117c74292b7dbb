"""What changed between two versions of a document's payload, for people reading ``khala tail``.

A pure function over JSON values: nested objects are walked and their fields named by dotted
path (``usage.tokens``); lists and scalars are compared whole. Field order follows the new
payload, then fields that disappeared, so the output is deterministic.
"""

from __future__ import annotations

import json
from typing import Any

MISSING = object()  # a field absent on one side


def changed_fields(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``[(path, old_value, new_value), ...]`` for every leaf that differs; ``MISSING`` marks absence."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[tuple[str, Any, Any]] = []
        for key in list(new) + [k for k in old if k not in new]:
            path = f"{prefix}.{key}" if prefix else str(key)
            changes.extend(changed_fields(old.get(key, MISSING), new.get(key, MISSING), path))
        return changes
    if old is not MISSING and new is not MISSING and type(old) is type(new) and old == new:
        return []
    if old is MISSING and isinstance(new, dict) and new:
        # A new object is named by its leaves; a new EMPTY object has none, so it is named whole
        # (walking it would report nothing although a field appeared).
        return changed_fields({}, new, prefix)
    return [(prefix or "payload", old, new)]


def format_value(value: Any, limit: int = 60) -> str:
    if value is MISSING:
        return "∅"
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_change(path: str, old: Any, new: Any) -> str:
    """``status: "queued" → "running"``; a new field shows only its value."""
    if old is MISSING:
        return f"{path}: {format_value(new)}"
    return f"{path}: {format_value(old)} → {format_value(new)}"
