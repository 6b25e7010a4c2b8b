"""Shared builders for the DRA plugin tests: the subsystem running beside a stand-in kubelet and the test API
server (with the project's RBAC), a simulated node's CDI spec, allocated ResourceClaims."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodeagent import events, testing
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.dra.subsystem import DraSubsystem
from nodeagent.model.gpu import Inventory
from nodeagent.settings import Settings, replace
from nodeagent.subsystem import Context
from nodeagent.testing.apiserver import TestApiServer
from nodeagent.testing.apiserver.resources import BY_PATH
from nodeagent.testing.kubelet_dra import KubeletDra
from tests.deviceplugin.support import until, write_cdi_spec
from tests.labels.test_labels_subsystem import kube_client

__all__ = [
    "Running",
    "cdi_follows",
    "claim",
    "following_inventory",
    "mig_sim",
    "running",
    "settings",
    "until",
    "write_cdi_spec",
]

DRIVER = "gpu.nvidia.com"
REG_SOCKET = "gpu.nvidia.com-reg.sock"


def settings() -> Settings:
    s = replace(Settings(), "deviceplugin", enabled=False)
    return replace(s, "dra", enabled=True)


@dataclass
class Running:
    ctx: Context
    plugin: DraSubsystem
    kubelet: KubeletDra
    server: TestApiServer
    stop: asyncio.Event


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    server: TestApiServer,
    *,
    sim: SimGpuBackend | None = None,
    inv: Inventory | None = None,
    s: Settings | None = None,
    register: bool = True,
) -> AsyncIterator[Running]:
    """The plugin (with the GPU-state owner's loop) on ``tmp_path`` as root, the Node gateway on ``server``;
    the stand-in kubelet has registered it when ``register``."""
    root = Root(tmp_path)
    owned = sim is None and inv is None
    if owned:
        sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    ctx = testing.context(root, s or settings(), gpus=sim, inventory=inv)
    ctx.node.use(kube_client(server))
    root.resolve("/var/lib/kubelet/plugins_registry").mkdir(parents=True, exist_ok=True)
    write_cdi_spec(root, await ctx.gpu_state.current())
    plugin = DraSubsystem(ctx)
    stop = asyncio.Event()
    await plugin.start()
    tasks = [asyncio.create_task(ctx.gpu_state.run(stop)), asyncio.create_task(plugin.run(stop))]
    kubelet = KubeletDra(root)
    try:
        if register:
            await until(lambda: REG_SOCKET in kubelet.sockets(), "the registration socket")
            assert await kubelet.register(REG_SOCKET) is not None, kubelet.refusals
        yield Running(ctx, plugin, kubelet, server, stop)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await plugin.stop()
        await ctx.node.close()
        if owned and sim is not None:
            await sim.close()


def claim(
    server: TestApiServer,
    name: str,
    devices: Sequence[str],
    *,
    namespace: str = "default",
    pool: str = "node-a",
    driver: str = DRIVER,
    request: str = "gpu",
    allocated: bool = True,
) -> str:
    """A ResourceClaim in the store, allocated ``devices`` (as the scheduler writes it); its UID."""
    uid = f"uid-{name}"
    body: dict[str, Any] = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "spec": {"devices": {"requests": [{"name": request, "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}},
    }
    if allocated:
        results = [{"request": request, "driver": driver, "pool": pool, "device": d} for d in devices]
        body["status"] = {"allocation": {"devices": {"results": results}}}
    server.store.put(BY_PATH[("resource.k8s.io", "v1", "resourceclaims")], body, "ADDED")
    return uid


async def mig_sim(count: int = 2, *instances: tuple[int, str, int]) -> SimGpuBackend:
    """``count`` simulated H100s (opened) with MIG enabled and the (GPU, profile, start) instances."""
    sim = SimGpuBackend("h100-80gb-hbm3", count, 0)
    await sim.open()
    for i in range(count):
        await sim.set_mig_mode(i, True)
        await sim.reset_gpu(i)
    for gpu, profile, start in instances:
        await sim.create_gpu_instance(gpu, profile, start=start)
    return sim


@contextlib.asynccontextmanager
async def following_inventory(ctx: Context, on_change: Callable[[Inventory], Awaitable[None]]) -> AsyncIterator[None]:
    """``on_change`` awaited with every inventory the GPU-state owner publishes, while the block runs."""

    async def follow() -> None:
        async with ctx.bus.subscribe(events.INVENTORY_CHANGED) as sub:
            async for event in sub:
                if isinstance(event.payload, Inventory):
                    await on_change(event.payload)

    task = asyncio.create_task(follow())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def cdi_follows(ctx: Context) -> contextlib.AbstractAsyncContextManager[None]:
    """The node's CDI spec rewritten on every inventory change, as the cdi subsystem keeps it (dynamic MIG's
    claim specs wait for it to name a new instance)."""

    async def rewrite(inv: Inventory) -> None:
        write_cdi_spec(ctx.root, inv)

    return following_inventory(ctx, rewrite)
