"""Publisher: a RuntimeClass for every handler the container runtime was configured with.

``nvidia`` always, ``nvidia-cdi`` / ``nvidia-legacy`` where the runtime configured them. A missing one is
created; one whose handler differs is corrected (the handler is immutable, so it is deleted and created
again); one missing the agent's managed-by label gets it. They are cluster objects shared by every node:
a create that loses the race to another agent (409 AlreadyExists) is fine. Nothing is deleted except
by ``revert``, and then only objects the agent's label marks as its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "nodeagent"


def desired(handler: str) -> dict[str, Any]:
    return {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": handler, "labels": {MANAGED_BY: MANAGER}},
        "handler": handler,
    }


def action(existing: Mapping[str, Any] | None, handler: str) -> str:
    """``create``, ``recreate`` (wrong handler), ``label`` (missing our label) or ``""`` (as wanted)."""
    if existing is None:
        return "create"
    if existing.get("handler") != handler:
        return "recreate"
    labels = (existing.get("metadata") or {}).get("labels") or {}
    if labels.get(MANAGED_BY) is None:
        return "label"
    return ""


def ours(existing: Mapping[str, Any]) -> bool:
    return ((existing.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY) == MANAGER
