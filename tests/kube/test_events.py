"""Kubernetes Events about the Node: created once, counted up on repeats, in the agent's namespace."""

from __future__ import annotations

from nodeagent.kube.client import FunnelSettings, KubeClient
from nodeagent.kube.credentials import Credentials
from nodeagent.kube.events import EventRecorder
from nodeagent.testing.apiserver import TestApiServer
from tests.kube.kube_support import AGENT_TOKEN


def client(server: TestApiServer, namespace: str = "nodeagent") -> KubeClient:
    creds = Credentials(server=server.url, token=lambda: AGENT_TOKEN, namespace=namespace)
    return KubeClient(creds, settings=FunnelSettings(max_attempts=1))


async def test_event_created_then_counted(apiserver: TestApiServer) -> None:
    async with client(apiserver) as c:
        recorder = EventRecorder(c, "node-a", clock=lambda: 1_800_000_000.0)
        assert await recorder.record("Normal", "GpuLabelsPublished", "27 labels", node_uid="u-1") is None
        assert await recorder.record("Normal", "GpuLabelsPublished", "27 labels") is None
    events = [o for (plural, _, _), o in apiserver.store.objects.items() if plural == "events"]
    assert len(events) == 1
    (event,) = events
    assert event["metadata"]["namespace"] == "nodeagent"
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": "u-1"}
    assert (event["count"], event["reason"], event["type"]) == (2, "GpuLabelsPublished", "Normal")
    assert event["lastTimestamp"] == "2027-01-15T08:00:00Z"


async def test_event_outside_the_granted_namespace_is_reported_not_raised(apiserver: TestApiServer) -> None:
    async with client(apiserver, namespace="default") as c:
        problem = await EventRecorder(c, "node-a").record("Warning", "X", "y")
    assert problem is not None and 'create events in namespace "default"' in problem
