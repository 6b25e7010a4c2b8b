"""Metrics on a GPU instance split into compute instances (issue 23 item 1): dcgm-exporter watches GPU
instances (DCGM's GPU_I entities, ``internal/pkg/devicemonitoring``) and labels them GPU_I_PROFILE and GPU_I_ID
only (``internal/pkg/rendermetrics/render_metrics.go``): one series per GPU instance, its GPU-instance
profile, no compute-instance label."""

from __future__ import annotations

from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.metrics.collector import Collector
from nodeagent.metrics.fields import default_counters
from tests.metrics.test_sim_parity import body


async def test_one_series_per_gpu_instance_labelled_with_its_gpu_instance_profile() -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 1)
    await sim.open()
    try:
        await sim.set_mig_mode(0, True)
        await sim.reset_gpu(0)
        await sim.create_gpu_instance(0, "3g.40gb", start=0, compute=((1, 0), (1, 1), (1, 2)))
        await sim.create_gpu_instance(0, "3g.40gb", start=4)
        inv = await sim.inventory()
        assert len(inv.gpus[0].mig_devices) == 4
        snap = await Collector(sim, default_counters(), slow_interval_s=30.0).sweep(inv)
        got = body(snap, default_counters())
        series = got["DCGM_FI_DEV_FB_USED"]
        assert sorted((s[0]["GPU_I_ID"], s[0]["GPU_I_PROFILE"]) for s in series) == [("1", "3g.40gb"), ("2", "3g.40gb")]
        assert all(set(s[0]) >= {"gpu", "UUID", "GPU_I_PROFILE", "GPU_I_ID"} for s in series)
        assert not any(k.startswith("GPU_CI") or k.startswith("CI") for s in series for k in s[0])
    finally:
        await sim.close()
