"""Shared builders for the device plugin tests: simulated inventories, a running plugin on a stand-in kubelet."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodeagent import testing
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.deviceplugin.subsystem import DevicePluginSubsystem
from nodeagent.kube.client import KubeClient
from nodeagent.model.gpu import Inventory
from nodeagent.settings import Settings, replace
from nodeagent.subsystem import Context
from nodeagent.testing.kubelet_plugins import KubeletDevicePlugins

PLUGIN_DIR = "/var/lib/kubelet/device-plugins"


async def inventory(count: int = 2, profile: str = "h100-80gb-hbm3", mig_layout: str = "") -> Inventory:
    sim = testing.sim_gpus(count, profile, mig_layout=mig_layout)
    await sim.open()
    try:
        return await sim.inventory()
    finally:
        await sim.close()


def settings(**deviceplugin: Any) -> Settings:
    s = Settings()
    s = replace(s, "gpuhealth", xid_window_s=1.0, min_publish_interval_s=0.0)
    return replace(s, "deviceplugin", **deviceplugin) if deviceplugin else s


def write_cdi_spec(root: Root, inv: Inventory, path: str = "/var/run/cdi/nvidia.yaml") -> None:
    """A CDI spec naming the inventory's devices as the cdi subsystem does (by index and UUID)."""
    names = []
    for g in inv.gpus:
        names += [str(g.index), g.uuid]
        names += [n for m in g.mig_devices for n in (f"{g.index}:{m.mig_index}", m.uuid)]
    body = "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n" + "".join(
        f"- name: {n!r}\n  containerEdits: {{deviceNodes: [{{path: /dev/nvidia0}}]}}\n" for n in [*names, "all"]
    )
    root.write_file(path, body.encode())


@dataclass
class Running:
    ctx: Context
    plugin: DevicePluginSubsystem
    kubelet: KubeletDevicePlugins
    sim: SimGpuBackend | None
    stop: asyncio.Event


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    s: Settings | None = None,
    *,
    sim: SimGpuBackend | None = None,
    inv: Inventory | None = None,
    kubelet_first: bool = True,
    kube: KubeClient | None = None,
    kubelet: KubeletDevicePlugins | None = None,
) -> AsyncIterator[Running]:
    """The plugin running (with the GPU-state owner's loop) beside a stand-in kubelet on ``tmp_path`` (or
    ``kubelet``, one the test started there)."""
    root = Root(tmp_path)
    if sim is None and inv is None:
        sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    ctx = testing.context(root, s or settings(), gpus=sim, inventory=inv)
    if kube is not None:
        ctx.node.use(kube)
    if kubelet is None:
        kubelet = KubeletDevicePlugins(root.resolve(PLUGIN_DIR))
        if kubelet_first:
            await kubelet.start()
    plugin = DevicePluginSubsystem(ctx)
    stop = asyncio.Event()
    await plugin.start()
    tasks = [asyncio.create_task(ctx.gpu_state.run(stop)), asyncio.create_task(plugin.run(stop))]
    try:
        yield Running(ctx, plugin, kubelet, sim, stop)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await plugin.stop()
        await kubelet.stop()
        await ctx.node.close()
        if sim is not None:
            await sim.close()


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Poll ``predicate`` (for state that has no event to await, such as a subsystem's status)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def bind_socket(directory: Path, name: str) -> socket.socket:
    """A listening unix socket ``directory/name`` (bound through the directory's descriptor: tmp paths are long)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(f"/proc/self/fd/{fd}/{name}")
        sock.listen(1)
        return sock
    finally:
        os.close(fd)
