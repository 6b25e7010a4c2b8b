"""Publisher: the ``NodeFeature`` object nfd-master applies to the Node (GFD's default since 2025).

Named ``nvidia-features-for-<node>`` in the agent's namespace, labelled
``nfd.node.kubernetes.io/node-name=<node>``, ``spec.labels`` = the label set, ``spec.features`` empty;
exactly what GFD writes. The object is updated only when its labels differ (GFD compares semantically).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

NAME_PREFIX = "nvidia-features-for"
NODE_NAME_LABEL = "nfd.node.kubernetes.io/node-name"
API_VERSION = "nfd.k8s-sigs.io/v1alpha1"


def object_name(node_name: str) -> str:
    return f"{NAME_PREFIX}-{node_name}"


def desired(node_name: str, namespace: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "NodeFeature",
        "metadata": {
            "name": object_name(node_name),
            "namespace": namespace,
            "labels": {NODE_NAME_LABEL: node_name},
        },
        "spec": {"features": {"flags": {}, "attributes": {}, "instances": {}}, "labels": dict(labels)},
    }


def update(existing: Mapping[str, Any], node_name: str, labels: Mapping[str, str]) -> dict[str, Any] | None:
    """The existing object with the wanted labels (keeping its resourceVersion), or None if equal."""
    meta = existing.get("metadata") or {}
    spec = existing.get("spec") or {}
    if (meta.get("labels") or {}) == {NODE_NAME_LABEL: node_name} and (spec.get("labels") or {}) == dict(labels):
        return None
    out = copy.deepcopy(dict(existing))
    out.setdefault("metadata", {})["labels"] = {NODE_NAME_LABEL: node_name}
    out["spec"] = {**(out.get("spec") or {}), "labels": dict(labels)}
    out["spec"].setdefault("features", {"flags": {}, "attributes": {}, "instances": {}})
    return out
