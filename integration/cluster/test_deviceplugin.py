"""The device plugin on the real kubelet (issue 21): simulated GPUs become the Node's allocatable.

The plugin runs in this process on the cluster's root (``cluster.base``
is laid out as the node's root: the kubelet's device-plugins directory is ``base/var/lib/kubelet/
device-plugins``), with 8 simulated H100s, and registers on the kubelet's own ``kubelet.sock``.

A pod with ``nvidia.com/gpu: 1`` runs with the GPU the plugin allocated, named by NVIDIA's envvar strategy
(``NVIDIA_VISIBLE_DEVICES``, read back from the container's spec in containerd), and the kubelet's pod-resources
socket attributes that GPU to the pod (what the metrics' pod labels come from). With the default `cdi-cri`
strategy containerd would inject the CDI spec's device nodes, which a simulated node does not have on this
host; the allocation itself is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from integration.cluster.cluster import PAUSE_IMAGE, Cluster
from integration.cluster.support import delete_pod, failed_scheduling, node, pod, until_async
from nodeagent import events, testing
from nodeagent.backends.deviceplugin_server import ContainerAllocation, Device, DevicePluginServer, register
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.backends.podresources import PodResourcesClient
from nodeagent.deviceplugin.subsystem import OPTIONS, DevicePluginSubsystem
from nodeagent.settings import Settings, replace

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.cluster]

GPU = "nvidia.com/gpu"
DISCONNECTED = f'"Device plugin disconnected" resource="{GPU}"'
CONNECTED = f'"Connected to new client" resource="{GPU}"'
KUBELET_STARTED = "Creating device plugin registration server"


def allocatable(cluster: Cluster, resource: str) -> int:
    return int(node(cluster)["status"].get("allocatable", {}).get(resource, "0"))


@contextlib.asynccontextmanager
async def plugin_on(cluster: Cluster, settings: Settings, sim: SimGpuBackend) -> AsyncIterator[DevicePluginSubsystem]:
    ctx = testing.context(Root(cluster.base), settings, gpus=sim, node_name=cluster.node_name)
    plugin = DevicePluginSubsystem(ctx)
    stop = asyncio.Event()
    await plugin.start()
    tasks = [asyncio.create_task(ctx.gpu_state.run(stop)), asyncio.create_task(plugin.run(stop))]
    try:
        yield plugin
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await plugin.stop()
        await sim.close()


def gpu_pod(name: str, count: int) -> dict[str, Any]:
    limits = {GPU: str(count)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "hostNetwork": True,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {"name": "main", "image": PAUSE_IMAGE, "imagePullPolicy": "Never", "resources": {"limits": limits}}
            ],
        },
    }


def settings() -> Settings:
    return replace(Settings(), "gpuhealth", xid_window_s=5.0, min_publish_interval_s=1.0)


async def test_allocatable_follows_the_plugin_an_xid_and_the_hold(cluster: Cluster) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 8, 0)
    # The kubelet publishes allocatable with its Node status (every 10 s by default): a hold shorter than
    # that could come and go between two of its updates.
    held = replace(settings(), "gpuhealth", xid_window_s=25.0, min_publish_interval_s=1.0)
    async with plugin_on(cluster, held, sim) as plugin:
        await ready(cluster, plugin)
        sim.inject_xid(3, 79)
        await until_async(lambda: allocatable(cluster, GPU) == 7, "an XID 79 lowering allocatable", timeout_s=25)
        await until_async(lambda: allocatable(cluster, GPU) == 8, "the GPU back after the hold", timeout_s=60)


async def test_nine_gpus_on_eight_stay_pending_with_the_schedulers_reason(cluster: Cluster) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 8, 0)
    async with plugin_on(cluster, settings(), sim) as plugin:
        await ready(cluster, plugin)
        cluster.admin.post("/api/v1/namespaces/default/pods", gpu_pod("nine-gpus", 9))
        try:
            await until_async(
                lambda: failed_scheduling(cluster.admin, "nine-gpus", "Insufficient nvidia.com/gpu"),
                "FailedScheduling: Insufficient nvidia.com/gpu",
                timeout_s=60,
            )
            doc = pod(cluster.admin, "nine-gpus")
            assert doc is not None and doc["status"].get("phase") == "Pending"
        finally:
            await asyncio.to_thread(delete_pod, cluster, "nine-gpus")


async def test_a_mig_change_turns_allocatable_into_56_mig_devices(cluster: Cluster) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 8, 0)
    mixed = replace(settings(), "labels", mig_strategy="mixed")
    async with plugin_on(cluster, mixed, sim) as plugin:
        await ready(cluster, plugin)
        after = SimGpuBackend("h100-80gb-hbm3", 8, 0, mig_layout="1g.10gb*7")
        await after.open()
        plugin.ctx.bus.publish(events.MIG_CHANGED, await after.inventory())
        await after.close()
        await until_async(lambda: allocatable(cluster, "nvidia.com/mig-1g.10gb") == 56, "56 nvidia.com/mig-1g.10gb")
        await until_async(lambda: allocatable(cluster, GPU) == 0, "nvidia.com/gpu dropped to 0")


async def test_a_pod_runs_with_the_gpu_the_plugin_allocated(cluster: Cluster) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 8, 0)
    envvar = replace(settings(), "deviceplugin", device_list_strategy=["envvar"])
    async with plugin_on(cluster, envvar, sim) as plugin:
        uuids = {g.uuid for g in (await sim.inventory()).gpus}
        await ready(cluster, plugin)
        cluster.admin.post("/api/v1/namespaces/default/pods", gpu_pod("one-gpu", 1))
        try:

            def running() -> bool:
                doc = pod(cluster.admin, "one-gpu")
                return doc is not None and doc["status"].get("phase") == "Running"

            await until_async(running, "the pod with one GPU Running", timeout_s=90)
            doc = pod(cluster.admin, "one-gpu")
            assert doc is not None
            container_id = doc["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
            assert cluster.containerd is not None
            info = json.loads(cluster.containerd.ctr("-n", "k8s.io", "containers", "info", container_id).stdout)
            env = dict(e.split("=", 1) for e in info["Spec"]["process"]["env"])
            visible = env.get("NVIDIA_VISIBLE_DEVICES", "")
            assert visible in uuids, (visible, sorted(uuids))

            client = PodResourcesClient(Root(cluster.base), "/var/lib/kubelet/pod-resources/kubelet.sock")
            try:
                held = [c for c in await client.list() if (c.namespace, c.pod) == ("default", "one-gpu")]
            finally:
                await client.close()
            assert [(c.container, c.resource_name, c.device_ids) for c in held] == [("main", GPU, (visible,))]
        finally:
            await asyncio.to_thread(delete_pod, cluster, "one-gpu")


def kubelet_healthy_after(cluster: Cluster, marker: str) -> int | None:
    """The healthy nvidia.com/gpu count of the kubelet device manager's latest device update logged after its
    last line containing ``marker``; None before one. The kubelet's own live record: the Node's allocatable
    lags it by a status update, and may still show the count from before."""
    lines = cluster.log("kubelet").read_text().splitlines()
    marks = [n for n, line in enumerate(lines) if marker in line]
    if not marks:
        return None
    updates = [
        line for line in lines[marks[-1] :] if "Processed device updates for resource" in line and f'"{GPU}"' in line
    ]
    return int(updates[-1].rsplit("healthyCount=", 1)[1].split()[0]) if updates else None


async def ready(cluster: Cluster, plugin: DevicePluginSubsystem) -> None:
    """This plugin's 8 GPUs allocatable: the kubelet watches it and its device manager counted 8 healthy
    after connecting to it, and the Node says 8 (an earlier test's plugin can leave 8 there a while)."""
    await until_async(lambda: streams(plugin) >= 1, "the kubelet watching the plugin")
    await until_async(lambda: kubelet_healthy_after(cluster, CONNECTED) == 8, "the kubelet: 8 healthy")
    await until_async(lambda: allocatable(cluster, GPU) == 8, "8 nvidia.com/gpu allocatable")


def streams(plugin: DevicePluginSubsystem) -> int:
    """The kubelet's open ListAndWatch streams on the plugin's nvidia.com/gpu server."""
    server = plugin.servers.get(GPU)
    return server.streams if server is not None else 0


class _NoAllocation:
    def preferred(self, available: tuple[str, ...], must_include: tuple[str, ...], size: int) -> tuple[str, ...]:
        return available[:size]

    async def allocate(self, device_ids: tuple[str, ...]) -> ContainerAllocation:
        return ContainerAllocation()


async def test_a_plugin_the_kubelet_drops_after_a_quick_restart_registers_again(cluster: Cluster) -> None:
    """A previous endpoint of nvidia.com/gpu whose stream ends after the agent's registration (what a quick
    agent restart gives): the kubelet's device manager then disconnects the client current at that moment,
    the agent's (``runClient`` in ``pkg/kubelet/cm/devicemanager/plugin/v1beta1/handler.go``, 1.34), and
    marks its devices unhealthy. The agent sees its stream closed and registers again. The previous
    endpoint is a bare plugin server here, so the order is certain."""
    root = Root(cluster.base)
    plugin_dir = settings().kubelet.device_plugins_dir
    previous = DevicePluginServer(root, plugin_dir, "previous-gpu.sock", _NoAllocation(), options=OPTIONS)
    await previous.start()
    try:
        previous.update(tuple(Device(f"previous-{i}", True) for i in range(8)))
        await register(root, plugin_dir, resource_name=GPU, endpoint="previous-gpu.sock", options=OPTIONS)
        await until_async(lambda: previous.streams == 1, "the kubelet watching the previous endpoint")
        sim = SimGpuBackend("h100-80gb-hbm3", 8, 0)
        async with plugin_on(cluster, settings(), sim) as plugin:
            await until_async(lambda: plugin.registrations == 1 and streams(plugin) == 1, "the agent registered")
            await previous.stop()  # its stream ends now, after the agent's registration
            await until_async(
                lambda: plugin.registrations == 2, "the agent registered again after the kubelet dropped it"
            )
            await until_async(lambda: streams(plugin) == 1, "the kubelet watching the agent again")
            await until_async(
                lambda: kubelet_healthy_after(cluster, DISCONNECTED) == 8, "the kubelet: 8 healthy after the drop"
            )
            await until_async(lambda: allocatable(cluster, GPU) == 8, "8 nvidia.com/gpu allocatable")
    finally:
        await previous.stop()


async def test_a_kubelet_restart_leaves_allocatable_as_it_was(cluster: Cluster) -> None:
    """The real kubelet, restarted, deletes the plugin's socket and recreates kubelet.sock: the plugin serves
    and registers again by itself (the file watch on kubelet.sock), and the Node's allocatable ends as it was."""
    sim = SimGpuBackend("h100-80gb-hbm3", 8, 0)
    async with plugin_on(cluster, settings(), sim) as plugin:
        await ready(cluster, plugin)
        server = plugin.servers[GPU]
        registrations = plugin.registrations
        await asyncio.to_thread(cluster.restart_kubelet)
        await until_async(lambda: plugin.registrations > registrations, "registered on the new kubelet")
        await until_async(lambda: server.socket_present() and server.streams == 1, "served and watched again")
        await until_async(lambda: kubelet_healthy_after(cluster, KUBELET_STARTED) == 8, "the new kubelet: 8 healthy")
        await until_async(lambda: allocatable(cluster, GPU) == 8, "8 nvidia.com/gpu allocatable after the restart", 60)
