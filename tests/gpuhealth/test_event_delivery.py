"""How XIDs and health reach gpuhealth: from the GPU-state owner, whichever other subsystems run.

No metrics subsystem here: the agent's GPU-state task (``GpuState.run``) is the only sampler, as with
``--only gpuhealth`` or ``metrics.enabled = false``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nodeagent import testing
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.gpuhealth.subsystem import GpuHealthSubsystem
from nodeagent.labels.subsystem import LabelsSubsystem
from nodeagent.testing.apiserver import TestApiServer
from tests.gpuhealth.test_node_health import NODE, condition_is, settings
from tests.labels.test_labels_subsystem import kube_client
from tests.support import wait_until


async def test_an_xid_turns_the_condition_false_without_the_metrics_subsystem(
    tmp_path: Path, apiserver: TestApiServer
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
        await wait_until(condition_is(apiserver, "True", "GpusHealthy"), "healthy at first")
        sim.inject_xid(1, 79)
        await wait_until(condition_is(apiserver, "False", "XidFallenOffBus"), "XID 79 on the Node")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await labels.stop()
        await health.stop()
        await ctx.node.close()
        await sim.close()
