"""The real cluster itself: the versions named in versions.env, a Ready node, a pod that runs."""

from __future__ import annotations

import pytest

from integration.cluster.cluster import Cluster, versions
from integration.cluster.support import delete_pod, host_network_pod, wait_pod

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.cluster]


def test_the_components_are_the_pinned_release(cluster: Cluster) -> None:
    want = versions()
    assert cluster.admin.get("/version")["gitVersion"] == want["KUBERNETES_VERSION"]

    def node_info() -> dict[str, str]:
        info: dict[str, str] = cluster.admin.get(f"/api/v1/nodes/{cluster.node_name}")["status"]["nodeInfo"]
        return info

    # The kubelet may register the Node before its first CRI Version answer ("containerd://Unknown"); the
    # next status sync fills it in.
    cluster.wait(
        "kubelet", lambda: not node_info()["containerRuntimeVersion"].endswith("Unknown"), 60, "reporting the runtime"
    )
    info = node_info()
    assert info["kubeletVersion"] == want["KUBERNETES_VERSION"]
    # the CRI reports the version without its "v"
    assert info["containerRuntimeVersion"] == "containerd://" + want["CONTAINERD_VERSION"].removeprefix("v"), info


def test_the_node_is_ready_and_untainted(cluster: Cluster) -> None:
    node = cluster.admin.get(f"/api/v1/nodes/{cluster.node_name}")
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert ready["Ready"] == "True", node["status"]["conditions"]
    assert not node["spec"].get("taints"), node["spec"]


def test_a_host_network_pod_is_scheduled_runs_and_stops(cluster: Cluster) -> None:
    """The scheduler binds it, the kubelet runs the pause image imported into containerd, then stops it."""
    cluster.admin.post("/api/v1/namespaces/default/pods", host_network_pod("smoke"))
    try:
        doc = wait_pod(cluster, "smoke", "Running", lambda p: p["status"].get("phase") == "Running")
        assert doc["spec"]["nodeName"] == cluster.node_name
        (status,) = doc["status"]["containerStatuses"]
        assert status["ready"] and status["containerID"].startswith("containerd://")
    finally:
        delete_pod(cluster, "smoke")
