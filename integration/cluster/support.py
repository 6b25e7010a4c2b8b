"""Helpers of the cluster tests: pods on the real node, waits on the real API server."""

from __future__ import annotations

from typing import Any

from integration.cluster.api import Api, ApiError
from integration.cluster.cluster import PAUSE_IMAGE, Cluster
from tests.support import wait_until


def host_network_pod(name: str, *, runtime_class: str | None = None, image: str = PAUSE_IMAGE) -> dict[str, Any]:
    """A pod of the image built here (never pulled), on the host's network, without a token mounted."""
    spec: dict[str, Any] = {
        "hostNetwork": True,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 5,
        "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never"}],
    }
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def pod(api: Api, name: str, namespace: str = "default") -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = api.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
    except ApiError as err:
        if err.status == 404:
            return None
        raise
    return doc


def wait_pod(cluster: Cluster, name: str, what: str, check: Any, timeout_s: float = 90) -> dict[str, Any]:
    """Wait until ``check(pod)`` holds; the failure shows the pod's status and the kubelet's last lines."""
    seen: dict[str, Any] = {}

    def ready() -> bool:
        doc = pod(cluster.admin, name)
        seen["pod"] = doc
        return bool(doc is not None and check(doc))

    try:
        wait_until(ready, timeout_s=timeout_s, what=f"pod {name} {what}", step_s=0.3)
    except BaseException:
        status = (seen.get("pod") or {}).get("status")
        print(f"pod {name} status: {status}\nkubelet:\n{cluster.tail('kubelet')}")
        raise
    return seen["pod"]


def delete_pod(cluster: Cluster, name: str) -> None:
    try:
        cluster.admin.call("DELETE", f"/api/v1/namespaces/default/pods/{name}", {"gracePeriodSeconds": 0})
    except ApiError as err:
        if err.status != 404:
            raise
    wait_until(lambda: pod(cluster.admin, name) is None, timeout_s=60, what=f"pod {name} deleted", step_s=0.3)


def container_waiting_message(doc: dict[str, Any]) -> str:
    """What the kubelet says about a pod that does not start (its events carry the runtime's error)."""
    parts = []
    for c in doc.get("status", {}).get("containerStatuses", []) or []:
        waiting = c.get("state", {}).get("waiting") or {}
        parts.append(f"{waiting.get('reason', '')}: {waiting.get('message', '')}")
    return "; ".join(parts)


def events_for(api: Api, namespace: str, name: str) -> list[dict[str, Any]]:
    doc = api.get(f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.name%3D{name}")
    items: list[dict[str, Any]] = doc.get("items", [])
    return items
