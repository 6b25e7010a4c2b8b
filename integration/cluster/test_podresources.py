"""Pod attribution from the real kubelet: nodeagent's PodResources client against the kubelet's own socket.

No device plugin serves GPUs yet, so the agent's answer (containers holding devices) is empty; the same
socket's raw List answer shows the real kubelet was asked: it lists the running pod, with no devices.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest
from grpclib.client import Channel

from integration.cluster.cluster import Cluster
from integration.cluster.support import delete_pod, host_network_pod, wait_pod
from nodeagent.backends.hostfs import Root
from nodeagent.backends.podresources import PodResourcesClient

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.cluster]

SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"


@pytest.fixture
def running_pod(cluster: Cluster) -> Iterator[str]:
    cluster.admin.post("/api/v1/namespaces/default/pods", host_network_pod("attributed"))
    try:
        wait_pod(cluster, "attributed", "Running", lambda p: p["status"].get("phase") == "Running")
        yield "attributed"
    finally:
        delete_pod(cluster, "attributed")


async def test_list_against_the_real_kubelet_socket(cluster: Cluster, running_pod: str) -> None:
    # The cluster's directory is laid out as a node's root: the kubelet's --root-dir is /var/lib/kubelet in it.
    client = PodResourcesClient(Root(cluster.base), SOCKET)
    try:
        assert await client.check() is None
        assert await client.list() == ()
        assert await client.list() == ()  # the kept channel answers a second call
    finally:
        await client.close()

    pb = importlib.import_module("nodeagent.backends._pb.podresources_pb2")
    grpc = importlib.import_module("nodeagent.backends._pb.podresources_grpc")
    channel = Channel(path=str(cluster.pod_resources_socket))
    try:
        reply = await grpc.PodResourcesListerStub(channel).List(pb.ListPodResourcesRequest(), timeout=10)
    finally:
        channel.close()
    pods = {(p.namespace, p.name): [(c.name, list(c.devices)) for c in p.containers] for p in reply.pod_resources}
    assert pods.get(("default", running_pod)) == [("main", [])], pods
