"""The device plugin on the real kubelet (issue 21): simulated GPUs become the Node's allocatable.

NOT RUN YET: written beside the unit tests (tests/deviceplugin/, on a stand-in kubelet) and left for the real
cluster; the first run may need fixes. The plugin runs in this process on the cluster's root (``cluster.base``
is laid out as the node's root: the kubelet's device-plugins directory is ``base/var/lib/kubelet/
device-plugins``), with 8 simulated H100s, and registers on the kubelet's own ``kubelet.sock``.

Not covered here yet: a pod that runs with ``nvidia.com/gpu: 1`` and sees its device nodes (containerd's CDI
injection needs the spec's device nodes on the host), and the pod labels of the metrics from pod-resources.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from integration.cluster.cluster import PAUSE_IMAGE, Cluster
from integration.cluster.support import delete_pod, events_for, node, pod
from nodeagent import events, testing
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.deviceplugin.subsystem import DevicePluginSubsystem
from nodeagent.settings import Settings, replace

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.cluster]

GPU = "nvidia.com/gpu"


def allocatable(cluster: Cluster, resource: str) -> int:
    return int(node(cluster)["status"].get("allocatable", {}).get(resource, "0"))


async def until(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


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
    async with plugin_on(cluster, settings(), sim):
        await until(lambda: allocatable(cluster, GPU) == 8, "8 nvidia.com/gpu allocatable")
        sim.inject_xid(3, 79)
        await until(lambda: allocatable(cluster, GPU) == 7, "an XID 79 lowering allocatable", timeout_s=15)
        await until(lambda: allocatable(cluster, GPU) == 8, "the GPU back after the hold", timeout_s=30)


async def test_nine_gpus_on_eight_stay_pending_with_the_schedulers_reason(cluster: Cluster) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 8, 0)
    async with plugin_on(cluster, settings(), sim):
        await until(lambda: allocatable(cluster, GPU) == 8, "8 nvidia.com/gpu allocatable")
        cluster.admin.post("/api/v1/namespaces/default/pods", gpu_pod("nine-gpus", 9))
        try:

            def unschedulable() -> bool:
                return any(
                    e.get("reason") == "FailedScheduling" and "Insufficient nvidia.com/gpu" in e.get("message", "")
                    for e in events_for(cluster.admin, "default", "nine-gpus")
                )

            await until(unschedulable, "FailedScheduling: Insufficient nvidia.com/gpu", timeout_s=60)
            doc = pod(cluster.admin, "nine-gpus")
            assert doc is not None and doc["status"].get("phase") == "Pending"
        finally:
            delete_pod(cluster, "nine-gpus")


async def test_a_mig_change_turns_allocatable_into_56_mig_devices(cluster: Cluster) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 8, 0)
    mixed = replace(settings(), "labels", mig_strategy="mixed")
    async with plugin_on(cluster, mixed, sim) as plugin:
        await until(lambda: allocatable(cluster, GPU) == 8, "8 nvidia.com/gpu allocatable")
        after = SimGpuBackend("h100-80gb-hbm3", 8, 0, mig_layout="1g.10gb*7")
        await after.open()
        plugin.ctx.bus.publish(events.MIG_CHANGED, await after.inventory())
        await after.close()
        await until(lambda: allocatable(cluster, "nvidia.com/mig-1g.10gb") == 56, "56 nvidia.com/mig-1g.10gb")
        await until(lambda: allocatable(cluster, GPU) == 0, "nvidia.com/gpu dropped to 0")
