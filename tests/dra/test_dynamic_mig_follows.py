"""Dynamic MIG with the metrics and labels subsystems beside the plugin, on the same GPU-state owner: the GPU
instance NodePrepareResources creates gets its own DCGM series (``GPU_I_PROFILE``, ``GPU_I_ID``) and GFD's
mixed-strategy MIG labels count it; after Unprepare both forget it. Nothing tells them but the inventory
refresh the plugin asks for."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nodeagent.labels.subsystem import LabelsSubsystem
from nodeagent.metrics.subsystem import MetricsSubsystem
from nodeagent.settings import replace
from nodeagent.testing.apiserver import TestApiServer
from tests.dra.support import DRIVER, cdi_follows, claim, mig_sim, running, settings, until
from tests.labels.test_labels_subsystem import NFD
from tests.metrics.test_subsystem import PROMETHEUS, client_for

DEVICE = "gpu-0-mig-3g40gb-9-4"


async def test_metrics_and_labels_follow_an_instance_made_and_destroyed_for_a_claim(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    sim = await mig_sim(2)
    s = replace(settings(), "dra", dynamic_mig=True)
    s = replace(s, "labels", mig_strategy="mixed", node_patch=False, node_feature=False)
    s = replace(s, "metrics", interval_s=1.0)  # a new instance is sampled (and exported) on the next sweep
    nfd = tmp_path / NFD.lstrip("/")
    try:
        async with running(tmp_path, apiserver, sim=sim, s=s) as r, cdi_follows(r.ctx):
            metrics, labels = MetricsSubsystem(r.ctx), LabelsSubsystem(r.ctx)
            client = await client_for(r.ctx)
            await metrics.start()
            await labels.start()
            tasks = [asyncio.create_task(metrics.run(r.stop)), asyncio.create_task(labels.run(r.stop))]

            async def series() -> str:
                response = await client.get("/metrics", headers=PROMETHEUS)
                return await response.text() if response.status == 200 else ""

            def profile_series(text: str) -> list[str]:
                return [ln for ln in text.splitlines() if ln.startswith("DCGM_FI_DEV_") and "3g.40gb" in ln]

            async def rendered_until(made: bool) -> list[str]:
                """The 3g.40gb series once a render has them (``made``) or has none: each render is awaited."""
                for _ in range(100):
                    metrics.rendered.clear()
                    found = profile_series(await series())
                    if bool(found) == made:
                        return found
                    await asyncio.wait_for(metrics.rendered.wait(), timeout=10)
                raise AssertionError(f"no render {'with' if made else 'without'} the 3g.40gb series")

            try:
                await until(lambda: DEVICE in {d.name for d in r.plugin.published}, "the placement published")
                assert profile_series(await series()) == []
                assert "nvidia.com/mig-3g.40gb.count" not in nfd.read_text()

                uid = claim(apiserver, "mig", [DEVICE])
                answer = (await r.kubelet.prepare(DRIVER, [(uid, "default", "mig")]))[uid]
                assert not answer.error, answer.error
                (mig,) = (await sim.inventory()).gpus[0].mig_devices
                made = await rendered_until(True)
                assert made and all(f'GPU_I_ID="{mig.gpu_instance_id}"' in ln for ln in made), made
                await until(lambda: "nvidia.com/mig-3g.40gb.count=1\n" in nfd.read_text(), "the MIG label")

                gone = (await r.kubelet.unprepare(DRIVER, [(uid, "default", "mig")]))[uid]
                assert not gone.error, gone.error
                await until(lambda: "nvidia.com/mig-3g.40gb.count" not in nfd.read_text(), "the MIG label gone")
                assert await rendered_until(False) == []
            finally:
                r.stop.set()
                await asyncio.gather(*tasks)
                await metrics.stop()
                await labels.stop()
                await client.close()
    finally:
        await sim.close()
