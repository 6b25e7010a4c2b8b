"""Kubernetes Events about the Node: created once, counted up on repeats, in ``default`` (where the API
server keeps Events about cluster-scoped objects), granted by the ``nodeagent-events`` Role."""

from __future__ import annotations

import pytest

from nodeagent.kube.client import FunnelSettings, KubeClient, KubeError
from nodeagent.kube.events import EventRecorder
from nodeagent.kube.resources import EVENTS
from tests.kube.servers import ServerUnderTest


def client(server: ServerUnderTest, role: str = "agent") -> KubeClient:
    return KubeClient(server.credentials(role), settings=FunnelSettings(max_attempts=1))


def stored_events(server: ServerUnderTest) -> list[dict[str, object]]:
    return list(server.events())


async def test_event_created_then_counted(apiserver: ServerUnderTest) -> None:
    async with client(apiserver) as c:
        recorder = EventRecorder(c, "node-a", clock=lambda: 1_800_000_000.0)
        assert await recorder.record("Normal", "GpuLabelsPublished", "27 labels", node_uid="u-1") is None
        assert await recorder.record("Normal", "GpuLabelsPublished", "27 labels") is None
    (event,) = stored_events(apiserver)
    assert event["metadata"]["namespace"] == "default"  # type: ignore[index]
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": "u-1"}
    assert (event["count"], event["reason"], event["type"]) == (2, "GpuLabelsPublished", "Normal")
    assert event["lastTimestamp"] == "2027-01-15T08:00:00Z"


async def test_an_event_about_the_node_outside_default_is_invalid(apiserver: ServerUnderTest) -> None:
    """The test server enforces the real API server's rule (seen on kube-apiserver 1.34: 422)."""
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "node-a.1", "namespace": "nodeagent"},
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": "node-a"},
        "type": "Normal",
        "reason": "X",
        "message": "y",
    }
    async with client(apiserver, "admin") as c:
        with pytest.raises(KubeError) as refused:
            await c.create(EVENTS, event, namespace="nodeagent")
        assert refused.value.code == 422 and "does not match event.namespace" in str(refused.value)
        event["metadata"] = {"name": "node-a.2", "namespace": "default"}
        await c.create(EVENTS, event, namespace="default")
    assert len(stored_events(apiserver)) == 1


async def test_an_event_refused_by_rbac_is_reported_not_raised(apiserver: ServerUnderTest) -> None:
    """Without a grant of ``events`` in ``default`` (an identity outside the agent's RoleBindings) the write is
    forbidden; the recorder returns the reason."""
    async with client(apiserver, "outsider") as c:
        problem = await EventRecorder(c, "node-a").record("Warning", "X", "y")
    assert problem is not None and 'create events in namespace "default"' in problem
    assert stored_events(apiserver) == []


async def test_the_node_gateway_records_through_one_recorder(apiserver: ServerUnderTest) -> None:
    """Every subsystem's Events go through the gateway's one recorder: a repeat from another writer counts up
    the same Event, which names the Node's uid as the gateway last saw it."""
    from nodeagent.nodegateway import NodeGateway

    c = client(apiserver)
    gateway = NodeGateway("node-a", lambda settings: c)
    uid = (await gateway.get())["metadata"]["uid"]
    assert await gateway.record_event("Warning", "XidFallenOffBus", "GPU 1 fell off the bus") is None  # gpuhealth
    assert await gateway.record_event("Warning", "XidFallenOffBus", "GPU 1 fell off the bus") is None  # again
    assert await gateway.record_event("Normal", "MigConfigApplied", "all-balanced") is None  # labels
    await gateway.close()
    by_reason = {e["reason"]: e for e in stored_events(apiserver)}
    assert sorted(by_reason) == ["MigConfigApplied", "XidFallenOffBus"]
    assert by_reason["XidFallenOffBus"]["count"] == 2
    assert by_reason["XidFallenOffBus"]["involvedObject"]["uid"] == uid  # type: ignore[index]


async def test_without_kubernetes_the_gateway_records_nothing_and_says_why() -> None:
    from nodeagent.nodegateway import NodeGateway

    gateway = NodeGateway("node-a", lambda settings: None)
    problem = await gateway.record_event("Normal", "X", "y")
    assert problem is not None and "no API server configured" in problem
