"""The rules for Node status (conditions through ``nodes/status``), taints and Pods, on both servers."""

from __future__ import annotations

from nodeagent.testing.apiserver import MERGE_PATCH, STRATEGIC_MERGE_PATCH
from tests.kube.servers import ServerUnderTest
from tests.kube.test_apiserver import NODES, call

COND = {
    "type": "NvidiaGpuHealthy",
    "status": "True",
    "reason": "GpusHealthy",
    "message": "8 of 8 GPUs healthy",
    "lastTransitionTime": "2026-12-02T07:00:00Z",
}


async def test_conditions_only_through_the_status_subresource(apiserver: ServerUnderTest) -> None:
    patch = {"status": {"conditions": [COND]}}
    status, body, _ = await call(apiserver, "PATCH", f"{NODES}/node-a", patch, content_type=STRATEGIC_MERGE_PATCH)
    assert status == 200 and [c["type"] for c in body["status"]["conditions"]] == ["Ready"], "ignored on the Node"
    status, body, _ = await call(
        apiserver, "PATCH", f"{NODES}/node-a/status", patch, content_type=STRATEGIC_MERGE_PATCH
    )
    assert status == 200
    assert [c["type"] for c in body["status"]["conditions"]] == ["NvidiaGpuHealthy", "Ready"], "merged by type"
    rv = body["metadata"]["resourceVersion"]
    again = {"status": {"conditions": [{**COND, "message": "7 of 8"}]}}
    status, body, _ = await call(
        apiserver, "PATCH", f"{NODES}/node-a/status", again, content_type=STRATEGIC_MERGE_PATCH
    )
    assert [c["message"] for c in body["status"]["conditions"] if c["type"] == "NvidiaGpuHealthy"] == ["7 of 8"]
    assert body["metadata"]["resourceVersion"] != rv
    # A status write cannot change the spec; the labels it can (the Node's status strategy resets only the spec).
    sneaky = {"metadata": {"labels": {"x": "y"}}, "spec": {"unschedulable": True}, "status": {"conditions": [COND]}}
    status, body, _ = await call(apiserver, "PATCH", f"{NODES}/node-a/status", sneaky, content_type=MERGE_PATCH)
    assert status == 200 and "unschedulable" not in body["spec"] and body["metadata"]["labels"]["x"] == "y"


async def test_condition_and_taint_validation(apiserver: ServerUnderTest) -> None:
    bad = {"status": {"conditions": [{**COND, "lastTransitionTime": "yesterday"}]}}
    status, body, _ = await call(apiserver, "PATCH", f"{NODES}/node-a/status", bad, content_type=STRATEGIC_MERGE_PATCH)
    assert status == 422 and [c["field"] for c in body["details"]["causes"]] == ["patch"], "the time does not decode"
    assert 'parsing time "yesterday"' in body["message"]
    # kube-apiserver 1.34 stores a condition's status and type as sent: neither is validated.
    odd = {"status": {"conditions": [{"type": "Odd", "status": "Yes"}, {"type": "Odd", "status": "No"}]}}
    status, body, _ = await call(apiserver, "PATCH", f"{NODES}/node-a/status", odd, content_type=MERGE_PATCH)
    assert status == 200 and [c["status"] for c in body["status"]["conditions"]] == ["Yes", "No"]
    taint = {"key": "nvidia.com/gpu.unhealthy", "value": "true", "effect": "NoSchedule"}
    status, _, _ = await call(
        apiserver, "PATCH", f"{NODES}/node-a", {"spec": {"taints": [taint]}}, content_type=MERGE_PATCH
    )
    assert status == 200
    twice = {"spec": {"taints": [taint, taint]}}
    status, body, _ = await call(apiserver, "PATCH", f"{NODES}/node-a", twice, content_type=MERGE_PATCH)
    assert status == 422 and "Duplicate value" in body["message"]
    wrong = {"spec": {"taints": [{"key": "a b", "effect": "Sometimes"}]}}
    status, body, _ = await call(apiserver, "PATCH", f"{NODES}/node-a", wrong, content_type=MERGE_PATCH)
    assert status == 422 and {c["field"] for c in body["details"]["causes"]} == {
        "metadata.taints[0].key",  # sic: the real server names this path
        "metadata.taints[0].effect",
    }


async def test_pods_listed_by_node_and_label_but_never_changed_by_the_agent(apiserver: ServerUnderTest) -> None:
    apiserver.add_pod("dp-1", "gpu-operator", "node-a", {"app": "nvidia-device-plugin-daemonset"})
    apiserver.add_pod("dp-2", "gpu-operator", "node-b", {"app": "nvidia-device-plugin-daemonset"})
    apiserver.add_pod("web", "default", "node-a", {"app": "web"})
    query = "?labelSelector=app%3Dnvidia-device-plugin-daemonset&fieldSelector=spec.nodeName%3Dnode-a"
    status, body, _ = await call(apiserver, "GET", f"/api/v1/pods{query}")
    assert status == 200 and [p["metadata"]["name"] for p in body["items"]] == ["dp-1"]
    status, body, _ = await call(apiserver, "GET", "/api/v1/pods?fieldSelector=status.phase%3DRunning")
    assert status == 200 and {p["metadata"]["name"] for p in body["items"]} >= {"dp-1", "dp-2", "web"}
    status, body, _ = await call(apiserver, "GET", "/api/v1/pods?fieldSelector=spec.containers%3Dx")
    assert status == 400 and body["message"] == "field label not supported: spec.containers"
    status, body, _ = await call(apiserver, "DELETE", "/api/v1/namespaces/gpu-operator/pods/dp-1")
    assert status == 403 and "cannot delete resource" in body["message"]
    status, _, _ = await call(apiserver, "DELETE", "/api/v1/namespaces/gpu-operator/pods/dp-1", role="admin")
    assert status == 200
