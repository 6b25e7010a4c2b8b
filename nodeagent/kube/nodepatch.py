"""Pure patches of a Node: labels, annotations, one status condition, one taint. Each returns ``None`` when the
Node already is as wanted, so a converged node makes no writes. The label, annotation and taint patches carry
the Node's resourceVersion: a concurrent change gets 409 and the writer recomputes from a fresh read."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def labels_of(node: Mapping[str, Any]) -> Mapping[str, str]:
    return (node.get("metadata") or {}).get("labels") or {}


def _meta_patch(node: Mapping[str, Any], field: str, changes: Mapping[str, str | None]) -> dict[str, Any] | None:
    current = (node.get("metadata") or {}).get(field) or {}
    diff = {k: v for k, v in changes.items() if current.get(k) != v}
    if not diff:
        return None
    rv = (node.get("metadata") or {}).get("resourceVersion")
    return {"metadata": {"resourceVersion": rv, field: dict(sorted(diff.items()))}}


def label_patch(node: Mapping[str, Any], changes: Mapping[str, str | None]) -> dict[str, Any] | None:
    """A merge patch setting these labels (``None`` removes one)."""
    return _meta_patch(node, "labels", changes)


def annotation_patch(node: Mapping[str, Any], changes: Mapping[str, str | None]) -> dict[str, Any] | None:
    """A merge patch setting these annotations (``None`` removes one)."""
    return _meta_patch(node, "annotations", changes)


def condition_patch(
    node: Mapping[str, Any], cond_type: str, status: str, reason: str, message: str, *, now: float
) -> dict[str, Any] | None:
    """A strategic merge patch for ``nodes/status`` setting one condition (merged by ``type``). None when the
    condition already says this; ``lastTransitionTime`` moves only when the status changes."""
    conditions = (node.get("status") or {}).get("conditions") or []
    old = next((c for c in conditions if isinstance(c, dict) and c.get("type") == cond_type), None)
    if old is not None and (old.get("status"), old.get("reason"), old.get("message")) == (status, reason, message):
        return None
    transition = rfc3339(now)
    if old is not None and old.get("status") == status and old.get("lastTransitionTime"):
        transition = old["lastTransitionTime"]
    condition = {
        "type": cond_type,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    return {"status": {"conditions": [condition]}}


def has_condition(node: Mapping[str, Any], cond_type: str) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(isinstance(c, dict) and c.get("type") == cond_type for c in conditions)


def remove_conditions_patch(node: Mapping[str, Any], types: Iterable[str]) -> dict[str, Any] | None:
    """A strategic merge patch for ``nodes/status`` deleting these conditions."""
    present = [t for t in types if has_condition(node, t)]
    if not present:
        return None
    return {"status": {"conditions": [{"type": t, "$patch": "delete"} for t in present]}}


def taint_patch(
    node: Mapping[str, Any], key: str, effect: str, *, present: bool, value: str = "true"
) -> dict[str, Any] | None:
    """Add or remove the taint ``key:effect``; other taints stay. The whole list is replaced, so the patch
    carries the resourceVersion and a concurrent change conflicts."""
    taints = list((node.get("spec") or {}).get("taints") or [])
    ours = [t for t in taints if t.get("key") == key and t.get("effect") == effect]
    if present == bool(ours):
        return None
    if present:
        taints.append({"key": key, "value": value, "effect": effect})
    else:
        taints = [t for t in taints if t not in ours]
    rv = (node.get("metadata") or {}).get("resourceVersion")
    return {"metadata": {"resourceVersion": rv}, "spec": {"taints": taints}}
