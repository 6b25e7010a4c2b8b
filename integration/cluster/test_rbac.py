"""RBAC by the real authorizer: the agent under the ServiceAccount that container/kubernetes/rbac.yaml binds.

A full simulated run (labels on the Node, the NvidiaGpuHealthy condition through nodes/status, the
unhealthy taint after an injected XID 48, a NodeFeature with NFD's CRD installed,
RuntimeClasses) against the real kube-apiserver gets no 403; and the real authorizer denies what the agent
does not need. RBAC cannot narrow `patch nodes` to the agent's own Node; the Node authorizer does that for
the kubelet's credentials (what the agent uses on bare metal), which the last test shows.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from integration.agent import simulated_agent
from integration.cluster.api import Api, ApiError
from integration.cluster.cluster import Cluster
from integration.cluster.support import (
    NODE_PATH,
    agent_env,
    condition,
    forbidden_lines,
    node,
    sandbox_with_kubeconfig,
)
from nodeagent.kube.events import EventRecorder
from nodeagent.kube.factory import make_client
from nodeagent.settings import KubeSettings
from tests.support import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.cluster]

SA_USER = "system:serviceaccount:nodeagent:nodeagent"
SA_GROUPS = ["system:serviceaccounts", "system:serviceaccounts:nodeagent", "system:authenticated"]


def test_a_full_run_under_the_agents_serviceaccount_gets_no_403(
    cluster: Cluster, agent_token: str, tmp_path: Path, node_restored: None
) -> None:
    sandbox_with_kubeconfig(cluster, tmp_path, agent_token)
    admin = cluster.admin
    with simulated_agent(tmp_path, agent_env(cluster)) as agent:
        wait_until(
            lambda: node(cluster)["metadata"]["labels"].get("nvidia.com/gpu.count") == "8",
            timeout_s=60,
            what=f"the agent's labels on the Node\n{agent.log.read_text()[-3000:]}",
        )
        labels = node(cluster)["metadata"]["labels"]
        assert labels["nvidia.com/gpu.present"] == "true"
        assert labels["nvidia.com/gpu.product"].startswith("NVIDIA-H100"), labels
        wait_until(
            lambda: (condition(node(cluster), "NvidiaGpuHealthy") or {}).get("status") == "True",
            timeout_s=30,
            what="NvidiaGpuHealthy=True through nodes/status",
        )

        def published(path: str) -> list[str]:
            return [item["metadata"]["name"] for item in admin.get(path)["items"]]

        wait_until(
            lambda: bool(published("/apis/nfd.k8s-sigs.io/v1alpha1/namespaces/nodeagent/nodefeatures")),
            timeout_s=30,
            what="a NodeFeature in the agent's namespace",
        )
        (feature,) = admin.get("/apis/nfd.k8s-sigs.io/v1alpha1/namespaces/nodeagent/nodefeatures")["items"]
        assert feature["spec"]["labels"]["nvidia.com/gpu.count"] == "8"
        wait_until(
            lambda: "nvidia" in published("/apis/node.k8s.io/v1/runtimeclasses"),
            timeout_s=30,
            what="the nvidia RuntimeClass",
        )

        # An XID 48 (double-bit ECC) on GPU 3: unhealthy condition, the taint, and an Event on the Node.
        inject = urllib.request.Request(f"{agent.url}/debug/sim/xid?gpu=3&xid=48", method="POST", data=b"")
        with urllib.request.urlopen(inject, timeout=5) as resp:
            assert resp.status == 200
        wait_until(
            lambda: (condition(node(cluster), "NvidiaGpuHealthy") or {}).get("status") == "False",
            timeout_s=30,
            what="NvidiaGpuHealthy=False after XID 48",
        )
        wait_until(
            lambda: any(t["key"] == "nvidia.com/gpu.unhealthy" for t in node(cluster)["spec"].get("taints") or []),
            timeout_s=30,
            what="the nvidia.com/gpu.unhealthy taint",
        )
        assert not forbidden_lines(agent.log), forbidden_lines(agent.log)
    assert not forbidden_lines(agent.log), forbidden_lines(agent.log)
    admin.delete("/apis/node.k8s.io/v1/runtimeclasses/nvidia")


async def test_the_agents_events_about_its_node_are_accepted(
    cluster: Cluster, agent_token: str, tmp_path: Path
) -> None:
    """The agent's own EventRecorder, with the agent's credentials: its Event about the Node is stored."""
    kubeconfig = cluster.kubeconfig_for_token(tmp_path / "kubeconfig", agent_token)
    client = make_client(KubeSettings(mode="kubeconfig", kubeconfig=str(kubeconfig), namespace="nodeagent"))
    assert client is not None
    async with client:
        problem = await EventRecorder(client, cluster.node_name).record("Normal", "GpuLabelsPublished", "a test")
    assert problem is None, problem
    stored = cluster.admin.get(
        f"/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{cluster.node_name}"
    )
    assert "GpuLabelsPublished" in [e["reason"] for e in stored["items"]]


def can(
    api: Api, verb: str, resource: str, *, namespace: str = "", group: str = "", sub: str = "", name: str = ""
) -> bool:
    """The real authorizer's answer for the agent's ServiceAccount (a SubjectAccessReview)."""
    attrs = {"verb": verb, "resource": resource, "group": group, "namespace": namespace}
    if sub:
        attrs["subresource"] = sub
    if name:
        attrs["name"] = name
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {"user": SA_USER, "groups": SA_GROUPS, "resourceAttributes": attrs},
    }
    answer = api.post("/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
    return bool(answer["status"].get("allowed"))


NEEDED = [
    ("get", "nodes", "", "", ""),
    ("watch", "nodes", "", "", ""),
    ("patch", "nodes", "", "", ""),
    ("patch", "nodes", "", "status", ""),
    ("list", "pods", "", "", ""),
    ("create", "runtimeclasses", "node.k8s.io", "", ""),
    ("delete", "runtimeclasses", "node.k8s.io", "", ""),
    ("create", "nodefeatures", "nfd.k8s-sigs.io", "", "nodeagent"),
    ("create", "events", "", "", "default"),
    ("patch", "events", "", "", "default"),
    ("list", "resourceslices", "resource.k8s.io", "", ""),
    ("create", "resourceslices", "resource.k8s.io", "", ""),
    ("update", "resourceslices", "resource.k8s.io", "", ""),
    ("delete", "resourceslices", "resource.k8s.io", "", ""),
    ("get", "resourceclaims", "resource.k8s.io", "", "default"),
]
NOT_NEEDED = [
    ("delete", "nodes", "", "", ""),
    ("create", "nodes", "", "", ""),
    ("update", "nodes", "", "", ""),
    ("list", "secrets", "", "", ""),
    ("get", "secrets", "", "", "nodeagent"),
    ("list", "configmaps", "", "", "kube-system"),
    ("create", "pods", "", "", "default"),
    ("delete", "pods", "", "", "default"),
    ("patch", "pods", "", "", "default"),
    ("create", "pods", "", "eviction", "default"),
    ("create", "serviceaccounts", "", "token", "nodeagent"),
    ("create", "events", "", "", "kube-system"),
    ("delete", "events", "", "", "default"),
    ("create", "nodefeatures", "nfd.k8s-sigs.io", "", "default"),
    ("patch", "nodes", "", "proxy", ""),
    ("create", "clusterrolebindings", "rbac.authorization.k8s.io", "", ""),
    ("escalate", "clusterroles", "rbac.authorization.k8s.io", "", ""),
    ("impersonate", "users", "", "", ""),
    ("update", "resourceclaims", "resource.k8s.io", "", "default"),
    ("update", "resourceclaims", "resource.k8s.io", "status", "default"),
    ("list", "resourceclaims", "resource.k8s.io", "", "default"),
    ("create", "deviceclasses", "resource.k8s.io", "", ""),
    ("watch", "resourceslices", "resource.k8s.io", "", ""),
]


def test_least_privilege_what_the_agent_does_not_need_is_denied(cluster: Cluster, agent_token: str) -> None:
    allowed = {r: can(cluster.admin, r[0], r[1], group=r[2], sub=r[3], namespace=r[4]) for r in NEEDED}
    denied = [r for r in NOT_NEEDED if can(cluster.admin, r[0], r[1], group=r[2], sub=r[3], namespace=r[4])]
    assert all(allowed.values()), [r for r, ok in allowed.items() if not ok]
    assert denied == [], f"allowed but not needed: {denied}"

    # And with the token itself, the real requests: 403, not 404 or success.
    sa = cluster.admin.as_token(agent_token)
    assert sa.status("DELETE", NODE_PATH.format(cluster.node_name)) == 403
    assert sa.status("GET", "/api/v1/secrets") == 403
    assert sa.status("GET", "/api/v1/namespaces/kube-system/secrets") == 403
    assert sa.status("POST", "/api/v1/namespaces/default/pods", {"apiVersion": "v1", "kind": "Pod"}) == 403
    assert sa.status("GET", NODE_PATH.format(cluster.node_name)) == 200


def test_the_node_authorizer_limits_the_kubelets_credentials_to_its_own_node(cluster: Cluster) -> None:
    """RBAC allows `patch nodes` on every Node; the kubelet identity may patch only its own."""
    pki = cluster.pki
    assert pki is not None
    other = "na-other-node"
    try:
        cluster.admin.post("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": other}})
    except ApiError as err:
        if err.status != 409:
            raise
    try:
        kubelet = Api(cluster.url, pki.ca.cert, pki.kubelet.cert, pki.kubelet.key)
        label = {"metadata": {"labels": {"nvidia.com/test": "x"}}}
        with pytest.raises(ApiError) as refused:
            kubelet.merge_patch(NODE_PATH.format(other), label)
        assert refused.value.status == 403, refused.value.body
        assert "node" in json.dumps(refused.value.body).lower()
        kubelet.merge_patch(NODE_PATH.format(cluster.node_name), label)
        kubelet.merge_patch(NODE_PATH.format(cluster.node_name), {"metadata": {"labels": {"nvidia.com/test": None}}})
        # With the ServiceAccount, RBAC allows patching the other Node too (rbac.yaml says why).
        assert can(cluster.admin, "patch", "nodes", name=other)
    finally:
        cluster.admin.delete(NODE_PATH.format(other))
