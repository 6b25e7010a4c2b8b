"""Helpers of the cluster tests: pods on the real node, waits on the real API server."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from integration.cluster.api import Api, ApiError
from integration.cluster.cluster import PAUSE_IMAGE, Cluster
from tests.support import wait_until

REPO = Path(__file__).parents[2]
NODE_PATH = "/api/v1/nodes/{}"


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


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def agent_env(cluster: Cluster) -> dict[str, str]:
    return {
        "NODE_NAME": cluster.node_name,
        "NODEAGENT_KUBE__MODE": "kubeconfig",
        "NODEAGENT_KUBE__KUBECONFIG": "/etc/nodeagent/kubeconfig",
        "NODEAGENT_KUBE__NAMESPACE": "nodeagent",
        "NODEAGENT_LABELS__NODE_PATCH": "true",
        "NODEAGENT_LABELS__NODE_FEATURE": "true",
        "NODEAGENT_LABELS__RUNTIME_CLASSES": "true",
        "NODEAGENT_LABELS__START_JITTER_S": "0",
        "NODEAGENT_GPUHEALTH__TAINT": "true",
        "NODEAGENT_AGENT__LOG_LEVEL": "debug",
    }


def sandbox_with_kubeconfig(cluster: Cluster, tmp_path: Path, token: str) -> None:
    """Lay out the simulated node first (a non-empty root is left alone), then add the agent's kubeconfig."""
    root = tmp_path / "root"
    laid = subprocess.run(
        [sys.executable, "-m", "nodeagent", "plan", "--simulate", "--only", "labels", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert (root / "etc/containerd/config.toml").exists(), laid.stderr
    (root / "etc/nodeagent").mkdir(parents=True, exist_ok=True)
    cluster.kubeconfig_for_token(root / "etc/nodeagent/kubeconfig", token)


def node(cluster: Cluster) -> dict[str, Any]:
    doc: dict[str, Any] = cluster.admin.get(NODE_PATH.format(cluster.node_name))
    return doc


def condition(doc: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in doc["status"].get("conditions", []) if c["type"] == kind), None)


def restore_node(cluster: Cluster, before: dict[str, Any]) -> None:
    """Give the shared Node back as it was: the agent's labels, taints and condition go."""
    doc = node(cluster)
    labels = {k: None for k in doc["metadata"].get("labels", {}) if k not in before["metadata"].get("labels", {})}
    cluster.admin.merge_patch(
        NODE_PATH.format(cluster.node_name),
        {"metadata": {"labels": labels}, "spec": {"taints": before["spec"].get("taints")}},
    )
    kept = [c for c in doc["status"]["conditions"] if c["type"].startswith(("Memory", "Disk", "PID", "Ready"))]
    cluster.admin.merge_patch(NODE_PATH.format(cluster.node_name) + "/status", {"status": {"conditions": kept}})


def forbidden_lines(log: Path) -> list[str]:
    """The agent's log lines (at debug level, so best-effort writes count too) that mention a refusal."""
    found = []
    for line in log.read_text().splitlines():
        try:
            fields = json.loads(line)
        except ValueError:
            fields = {"line": line}
        fields.pop("timestamp", None)
        text = json.dumps(fields).lower()
        if re.search(r"\b403\b", text) or "forbidden" in text:
            found.append(line)
    return found


async def until_async(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    """Poll ``check`` (API state the test has no watch of) without blocking the loop the plugin runs on."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


def failed_scheduling(api: Api, name: str, text: str, namespace: str = "default") -> bool:
    """Whether the scheduler said ``text`` in a FailedScheduling Event about the pod."""
    return any(
        e.get("reason") == "FailedScheduling" and text in e.get("message", "") for e in events_for(api, namespace, name)
    )
