"""How XIDs and health reach gpuhealth: from the GPU-state owner, whichever other subsystems run.

No metrics subsystem here: the agent's GPU-state task (``GpuState.run``) is the only sampler, as with
``--only gpuhealth`` or ``metrics.enabled = false``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from nodeagent import testing
from nodeagent.app import Agent
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.gpuhealth.subsystem import GpuHealthSubsystem
from nodeagent.kube.client import STRATEGIC_MERGE_PATCH
from nodeagent.kube.resources import NODES
from nodeagent.labels.subsystem import LabelsSubsystem
from nodeagent.model.health import CONDITION_TYPE, TAINT_KEY
from nodeagent.settings import replace
from tests.gpuhealth.test_node_health import NODE, WINDOW, Clock, condition_is, settings, taints
from tests.kube.servers import ServerUnderTest, kube_client
from tests.support import free_port, until


async def test_an_xid_turns_the_condition_false_without_the_metrics_subsystem(
    tmp_path: Path, apiserver: ServerUnderTest
) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    ctx = testing.context(Root(tmp_path), settings(), gpus=sim, node_name=NODE)
    health, labels = GpuHealthSubsystem(ctx), LabelsSubsystem(ctx)
    ctx.node.use(kube_client(apiserver))
    await health.start()
    await labels.start()
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(ctx.gpu_state.run(stop)),  # what the agent runs as its "gpu-state" task
        asyncio.create_task(health.run(stop)),
        asyncio.create_task(labels.run(stop)),
    ]
    try:
        await until(condition_is(apiserver, "True", "GpusHealthy"), "healthy at first")
        sim.inject_xid(1, 79)
        await until(condition_is(apiserver, "False", "XidFallenOffBus"), "XID 79 on the Node")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await labels.stop()
        await health.stop()
        await ctx.node.close()
        await sim.close()


def events_about_node(server: ServerUnderTest) -> list[dict[str, Any]]:
    return server.events()


async def test_gpuhealth_alone_writes_its_condition_and_taint(tmp_path: Path, apiserver: ServerUnderTest) -> None:
    """``--only gpuhealth``: no labels, no metrics. The agent's one client (from a kubeconfig, as the composition
    root builds it) carries the ``NvidiaGpuHealthy`` condition and the taint; once the XID has been held for its
    window, the condition is True again and the taint gone."""
    (tmp_path / "etc/nodeagent").mkdir(parents=True)
    apiserver.write_kubeconfig(tmp_path / "etc/nodeagent/kubeconfig")
    s = replace(settings(taint=True), "kube", mode="kubeconfig", kubeconfig="/etc/nodeagent/kubeconfig")
    s = replace(s, "agent", listen=f"127.0.0.1:{free_port()}", shutdown_timeout_s=2.0)
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    ctx = testing.context(Root(tmp_path), s, gpus=sim, node_name=NODE)
    clock = Clock()
    health = GpuHealthSubsystem(ctx, clock=clock)
    agent = Agent(testing.parts(ctx, [health]))
    task = asyncio.create_task(agent.run())
    try:
        await until(condition_is(apiserver, "True", "GpusHealthy"), "healthy at first")
        assert taints(apiserver) == []
        sim.inject_xid(1, 79)
        await until(condition_is(apiserver, "False", "XidFallenOffBus"), "XID 79 on the Node")
        await until(lambda: [t["key"] for t in taints(apiserver)] == [TAINT_KEY], "the taint")
        assert "XidFallenOffBus" in [e["reason"] for e in events_about_node(apiserver)], "an Event says so"
        clock.t += WINDOW + 1  # the XID's hold (its window) is over
        health.evaluate()
        await until(condition_is(apiserver, "True", "GpusHealthy"), "healthy after the hold")
        await until(lambda: taints(apiserver) == [], "the taint gone")
        assert health.status().details["node"]["error"] == ""
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, 10)
        await sim.close()


async def test_a_removed_condition_is_written_again(tmp_path: Path, apiserver: ServerUnderTest) -> None:
    """Someone deletes the condition: the gateway's watch shows it, and gpuhealth puts it back."""
    sim = SimGpuBackend("h100-80gb-hbm3", 1, 0)
    ctx = testing.context(Root(tmp_path), settings(), gpus=sim, node_name=NODE)
    health = GpuHealthSubsystem(ctx)
    ctx.node.use(kube_client(apiserver))
    await health.start()
    stop = asyncio.Event()
    task = asyncio.create_task(health.run(stop))
    try:
        await until(condition_is(apiserver, "True", "GpusHealthy"), "written at start")
        admin = kube_client(apiserver, "admin")
        patch = {"status": {"conditions": [{"type": CONDITION_TYPE, "$patch": "delete"}]}}
        removed = await admin.patch(NODES, NODE, patch, content_type=STRATEGIC_MERGE_PATCH, subresource="status")
        await admin.close()
        assert CONDITION_TYPE not in [c["type"] for c in removed["status"]["conditions"]], "the removal was stored"
        await until(condition_is(apiserver, "True", "GpusHealthy"), "written again")
    finally:
        stop.set()
        await task
        await health.stop()
        await ctx.node.close()
        await sim.close()


async def test_labels_writes_no_health_condition(tmp_path: Path, apiserver: ServerUnderTest) -> None:
    """One writer of the health condition and taint: the labels subsystem leaves a published report alone."""
    from nodeagent import events
    from nodeagent.model.health import GpuHealthReport, GpuIncident, NodeGpuHealth, Verdict

    sim = SimGpuBackend("h100-80gb-hbm3", 1, 0)
    ctx = testing.context(Root(tmp_path), settings(), gpus=sim, node_name=NODE)
    labels = LabelsSubsystem(ctx)
    ctx.node.use(kube_client(apiserver))
    bad = GpuIncident("PCIE", "DCGM_FR_FALLEN_OFF_BUS", Verdict.FAIL, "XidFallenOffBus", "off the bus")
    ctx.bus.publish(events.NODE_GPU_HEALTH, NodeGpuHealth((GpuHealthReport(0, "u", (bad,)),), taint=True))
    await labels.start()
    stop = asyncio.Event()
    task = asyncio.create_task(labels.run(stop))
    try:
        await until(lambda: "nvidia.com/gpu.count" in node_labels(apiserver), "the labels published")
        ctx.bus.publish(events.NODE_GPU_HEALTH, NodeGpuHealth((GpuHealthReport(0, "u", (bad,)),), taint=True))
        await asyncio.sleep(0.2)  # what labels would have written by now
        found = apiserver.object("nodes", NODE)
        assert found is not None
        assert CONDITION_TYPE not in [c["type"] for c in found["status"].get("conditions", [])]
        assert taints(apiserver) == []
    finally:
        stop.set()
        await task
        await labels.stop()
        await ctx.node.close()
        await sim.close()


def node_labels(server: ServerUnderTest) -> dict[str, str]:
    found = server.object("nodes", NODE)
    return dict((found or {}).get("metadata", {}).get("labels") or {})
