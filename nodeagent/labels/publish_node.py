"""Publisher: a JSON merge-patch of the agent's own Node that touches only the labels it owns.

The keys the agent set are recorded in the annotation ``OWNED_ANNOTATION`` (sorted, comma-separated).
The patch adds or changes the wanted labels, removes the keys the annotation lists that are no longer
wanted (a MIG profile that went away), and never names any other key, so labels others set are left as
they are. The patch carries the Node's resourceVersion: a concurrent change gets 409 and the subsystem
recomputes from a fresh read. ``None`` when the Node already carries exactly what is wanted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OWNED_ANNOTATION = "nodeagent.nvidia.com/owned-labels"


def owned_keys(node: Mapping[str, Any]) -> set[str]:
    text = ((node.get("metadata") or {}).get("annotations") or {}).get(OWNED_ANNOTATION, "")
    return {k for k in str(text).split(",") if k}


def node_patch(node: Mapping[str, Any], wanted: Mapping[str, str]) -> dict[str, Any] | None:
    meta = node.get("metadata") or {}
    current: Mapping[str, str] = meta.get("labels") or {}
    changes: dict[str, str | None] = {k: v for k, v in wanted.items() if current.get(k) != v}
    for key in owned_keys(node) - set(wanted):
        if key in current:
            changes[key] = None
    owned_text = ",".join(sorted(wanted))
    annotation_current = (meta.get("annotations") or {}).get(OWNED_ANNOTATION)
    if not changes and annotation_current == owned_text:
        return None
    patch_meta: dict[str, Any] = {"resourceVersion": meta.get("resourceVersion")}
    if changes:
        patch_meta["labels"] = dict(sorted(changes.items()))
    if annotation_current != owned_text:
        patch_meta["annotations"] = {OWNED_ANNOTATION: owned_text if wanted else None}
    return {"metadata": patch_meta}


def revert_patch(node: Mapping[str, Any]) -> dict[str, Any] | None:
    """Remove every owned label and the annotation."""
    return node_patch(node, {})


def label_lines(node: Mapping[str, Any], wanted: Mapping[str, str]) -> tuple[bytes, bytes]:
    """Before/after text of the labels the patch concerns, for a readable diff in ``nodeagent plan``."""
    current: Mapping[str, str] = (node.get("metadata") or {}).get("labels") or {}
    keys = set(wanted) | (owned_keys(node) & set(current))
    before = "".join(f"{k}={current[k]}\n" for k in sorted(keys) if k in current)
    after = "".join(f"{k}={wanted[k]}\n" for k in sorted(wanted))
    return before.encode(), after.encode()
