"""The composition root: the one place that picks simulated or real parts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from nodeagent.app import Agent
from nodeagent.backends.gpu.nogpu import NoGpuBackend
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.kmod import Modprobe
from nodeagent.backends.runtimectl import HostRuntimeControl, SimRuntimeControl
from nodeagent.backends.sim.modprobe import SimModprobe
from nodeagent.compose import compose
from nodeagent.settings import load, replace
from tests.support import free_port

DEBUG = ("POST", "/debug/sim/{fault}")


async def test_simulation_gets_every_simulated_part_and_the_debug_routes(tmp_path: Path) -> None:
    settings = replace(load(), "simulation", enabled=True, count=2)
    settings = replace(settings, "agent", root=str(tmp_path))
    parts = await compose(settings, {}, only=["driver"])
    try:
        b = parts.ctx.backends
        assert isinstance(b.gpus, SimGpuBackend)
        assert isinstance(b.runtime_control, SimRuntimeControl)
        assert isinstance(b.module_loader, SimModprobe)
        assert parts.simulated and DEBUG in parts.ctx.routes
        assert parts.inventory is not None and len(parts.inventory.gpus) == 2
        assert (tmp_path / "proc/driver/nvidia/version").is_file(), "the sandbox was laid out"
    finally:
        await parts.ctx.gpus.close()


async def test_a_real_node_gets_real_parts_and_no_debug_routes(tmp_path: Path) -> None:
    settings = replace(load(), "agent", root=str(tmp_path))
    parts = await compose(settings, {"NODE_NAME": "gpu-7"}, only=["runtime"])
    b = parts.ctx.backends
    assert isinstance(b.gpus, NoGpuBackend), "no enabled subsystem needs a GPU"
    assert isinstance(b.runtime_control, HostRuntimeControl)
    assert isinstance(b.module_loader, Modprobe)
    assert not parts.simulated and DEBUG not in parts.ctx.routes
    assert parts.ctx.node_name == "gpu-7"
    assert [s.name for s in parts.subsystems] == ["runtime", "validation"]
    assert not any((tmp_path / d).exists() for d in ("proc", "dev")), "a real root is never laid out"


async def test_metrics_always_serves_the_agents_own_series(tmp_path: Path) -> None:
    """With `--only runtime` there is no GPU exposition, but /metrics still answers with the agent's series."""
    settings = replace(load(), "simulation", enabled=True, count=1)
    settings = replace(settings, "agent", root=str(tmp_path), listen=f"127.0.0.1:{free_port()}")
    parts = await compose(settings, {}, only=["runtime"])
    agent = Agent(parts)
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(10):
            while not agent.ready():
                await asyncio.sleep(0.02)
        async with aiohttp.ClientSession() as http, http.get(f"http://{settings.agent.listen}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    finally:
        agent.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
    assert 'nodeagent_subsystem_up{subsystem="runtime"} 1.0' in text
    assert 'nodeagent_subsystem_up{subsystem="validation"} 1.0' in text
    assert "nodeagent_loop_lag_seconds" in text and "process_resident_memory_bytes" in text
    assert "DCGM_FI_DEV_GPU_TEMP" not in text


async def test_the_kubelet_client_and_file_watches_are_built_by_compose(tmp_path: Path) -> None:
    """Subsystems get the PodResources client and the file watcher from the context, through the root."""
    import dataclasses

    from nodeagent import testing
    from nodeagent.backends.hostfs import Root
    from nodeagent.backends.podresources import PodResourcesClient
    from nodeagent.backends.watch import FileWatcher
    from nodeagent.metrics.subsystem import MetricsSubsystem

    settings = replace(load(), "kubelet", pod_resources_socket="/k/pod-resources.sock")
    parts = await compose(replace(settings, "simulation", enabled=True, sandbox=str(tmp_path / "sb")), {})
    client = parts.ctx.backends.pod_resources("/k/pod-resources.sock")
    assert isinstance(client, PodResourcesClient) and client.root is parts.ctx.root
    assert isinstance(parts.ctx.backends.file_watcher([tmp_path], poll_s=0.5), FileWatcher)
    # the test context is built the same way: every backend there, none left for subsystems to build
    ctx = testing.context(Root(tmp_path / "t"), settings)
    assert {f.name for f in dataclasses.fields(ctx.backends) if getattr(ctx.backends, f.name) is None} == set()

    asked: list[str] = []

    def connector(path: str) -> PodResourcesClient:
        asked.append(path)
        return PodResourcesClient(ctx.root, path)

    ctx.backends = dataclasses.replace(ctx.backends, pod_resources=connector)
    metrics = MetricsSubsystem(ctx)
    await metrics.start()
    try:
        assert asked == ["/k/pod-resources.sock"]
    finally:
        await metrics.stop()
