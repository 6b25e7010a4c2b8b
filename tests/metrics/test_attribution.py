"""Pod attribution: device id forms (GPU and MIG UUIDs, names, GKE, replicas) and the kubelet client
against a stand-in kubelet serving PodResources List over a real unix socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from grpclib.const import Status

from nodeagent.backends.hostfs import Root
from nodeagent.backends.podresources import ContainerDevices, PodResourcesClient
from nodeagent.errors import BackendUnavailable
from nodeagent.metrics.attribution import attribute
from nodeagent.metrics.series_labels import PodRef
from tests.metrics.fakes import FakeGpus
from tests.metrics.kubelet import KubeletStandIn, PodDevice, serve, shutdown

SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"


def rec(pod: str, resource: str, *ids: str, namespace: str = "ml", container: str = "main") -> ContainerDevices:
    return ContainerDevices(namespace, pod, container, resource, ids)


async def test_gpu_and_mig_uuids() -> None:
    gpus = FakeGpus(2, migs=0)
    gpus.set_migs(1, 3)
    inv = await gpus.inventory()
    mig = inv.gpus[1].mig_devices[2]
    pods, unmatched = attribute(
        [
            rec("a", "nvidia.com/gpu", inv.gpus[0].uuid),
            rec("b", "nvidia.com/mig-1g.10gb", mig.uuid),
            rec("c", "nvidia.com/mig-1g.10gb", "MIG-does-not-exist"),
        ],
        inv,
    )
    assert pods == {0: PodRef("a", "ml", "main"), (1, mig.gpu_instance_id): PodRef("b", "ml", "main")}
    assert unmatched == 1


async def test_device_names_gke_ids_and_replica_suffixes() -> None:
    inv = await FakeGpus(4).inventory()
    pods, unmatched = attribute(
        [
            rec("by-name", "nvidia.com/gpu", "nvidia1"),
            rec("gke-mig", "nvidia.com/mig-1g.10gb", "nvidia2/gi9"),
            rec("gke-vgpu", "nvidia.com/gpu", "nvidia3/vgpu0"),
            rec("shared", "nvidia.com/gpu", f"{inv.gpus[0].uuid}::3"),
        ],
        inv,
    )
    assert pods == {
        1: PodRef("by-name", "ml", "main"),
        (2, 9): PodRef("gke-mig", "ml", "main"),
        3: PodRef("gke-vgpu", "ml", "main"),
        0: PodRef("shared", "ml", "main"),
    }
    assert unmatched == 0


async def test_other_resources_are_ignored_and_sharing_is_deterministic() -> None:
    inv = await FakeGpus(1).inventory()
    uuid = inv.gpus[0].uuid
    records = [
        rec("zeta", "nvidia.com/gpu", f"{uuid}::1"),
        rec("alpha", "nvidia.com/gpu", f"{uuid}::0"),
        rec("nic", "example.com/nic", "nvidia0"),
        rec("cpu", "cpu", uuid),
    ]
    pods, _ = attribute(records, inv)
    assert pods == {0: PodRef("alpha", "ml", "main")}
    assert attribute(list(reversed(records)), inv)[0] == pods


# ------------------------------------------------------------------------------ client vs kubelet


@pytest.fixture
def root(tmp_path: Path) -> Root:
    (tmp_path / "var/lib/kubelet/pod-resources").mkdir(parents=True)
    return Root(tmp_path)


async def test_list_against_the_stand_in_kubelet(root: Root) -> None:
    gpus = FakeGpus(2, migs=2)
    inv = await gpus.inventory()
    service = KubeletStandIn(
        pods=[
            PodDevice("ml", "train-0", "worker", "nvidia.com/mig-1g.10gb", [inv.gpus[0].mig_devices[1].uuid]),
            PodDevice("ml", "train-0", "sidecar", "example.com/thing", ["x"]),
            PodDevice("web", "infer", "app", "nvidia.com/mig-1g.10gb", [inv.gpus[1].mig_devices[0].uuid]),
        ]
    )
    server = await serve(str(root.resolve(SOCKET)), service)
    client = PodResourcesClient(root, SOCKET, timeout_s=5)
    try:
        assert await client.check() is None
        records = await client.list()
        assert (
            ContainerDevices("ml", "train-0", "worker", "nvidia.com/mig-1g.10gb", (inv.gpus[0].mig_devices[1].uuid,))
            in records
        )
        assert len(records) == 3
        pods, _ = attribute(records, inv)
        assert pods == {(0, 8): PodRef("train-0", "ml", "worker"), (1, 7): PodRef("infer", "web", "app")}
        await client.list()
        assert service.calls == 2, "one channel, reused"
    finally:
        await client.close()
        await shutdown(server)


async def test_missing_socket_is_a_reason_not_a_crash(root: Root) -> None:
    client = PodResourcesClient(root, SOCKET, timeout_s=5)
    assert await client.check() == f"no kubelet socket at {SOCKET}"
    with pytest.raises(BackendUnavailable, match="no kubelet socket"):
        await client.list()
    root.resolve(SOCKET).write_text("not a socket")
    assert await client.check() == f"{SOCKET} is not a socket"


async def test_kubelet_errors_become_backend_unavailable(root: Root) -> None:
    service = KubeletStandIn(fail_with=Status.UNAVAILABLE)
    server = await serve(str(root.resolve(SOCKET)), service)
    client = PodResourcesClient(root, SOCKET, timeout_s=5)
    try:
        with pytest.raises(BackendUnavailable, match="kubelet List failed: UNAVAILABLE"):
            await client.list()
        service.fail_with = None
        assert await client.list() == ()
    finally:
        await client.close()
        await shutdown(server)


async def test_rate_limit_is_enforced_by_the_stand_in(root: Root) -> None:
    service = KubeletStandIn(qps=0.001, burst=2)
    server = await serve(str(root.resolve(SOCKET)), service)
    client = PodResourcesClient(root, SOCKET, timeout_s=5)
    try:
        await client.list()
        await client.list()
        with pytest.raises(BackendUnavailable, match="RESOURCE_EXHAUSTED"):
            await client.list()
    finally:
        await client.close()
        await shutdown(server)


async def test_a_restarted_kubelet_is_picked_up(root: Root) -> None:
    path = str(root.resolve(SOCKET))
    service = KubeletStandIn()
    server = await serve(path, service)
    client = PodResourcesClient(root, SOCKET, timeout_s=5)
    try:
        await client.list()
        await shutdown(server)
        Path(path).unlink()
        with pytest.raises(BackendUnavailable):
            await client.list()
        server = await serve(path, service)
        await client.list()
        assert service.calls == 2
    finally:
        await client.close()
        await shutdown(server)


async def test_a_hung_kubelet_times_out(root: Root) -> None:
    class Hung(KubeletStandIn):
        async def List(self, stream):  # type: ignore[no-untyped-def]
            await stream.recv_message()
            await asyncio.Event().wait()

    server = await serve(str(root.resolve(SOCKET)), Hung())
    client = PodResourcesClient(root, SOCKET, timeout_s=0.2)
    try:
        with pytest.raises(BackendUnavailable, match="kubelet List failed"):
            await client.list()
    finally:
        await client.close()
        await shutdown(server)
