"""dcgm-exporter parity on simulated nodes (issue 23, points 7, 8, 10, 20): profiling fields without GPM
(Ampere), NVLink bandwidth on H100 SXM, the fields MIG instance series carry, and profiling series right
after a MIG change."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import structlog

from nodeagent import events
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.events import Event
from nodeagent.metrics.collector import Collector, Snapshot
from nodeagent.metrics.exposition import Format, build_layout, render
from nodeagent.metrics.fields import FIELDS, Counter, default_counters
from nodeagent.metrics.series_labels import entities
from nodeagent.metrics.subsystem import MetricsSubsystem
from nodeagent.model.gpu import GPM_READINGS, Reading, SampleRequest
from nodeagent.subsystem import Phase, Status
from tests.metrics.fakes import make_context
from tests.metrics.test_health_series import SERIES

PROF = [n for n in FIELDS if n.startswith("DCGM_FI_PROF_")]
ALL_PROF = tuple(Counter(FIELDS[n], FIELDS[n].kind, FIELDS[n].help) for n in PROF)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def body(snap: Snapshot, counters: tuple[Counter, ...]) -> dict[str, list[tuple[dict[str, str], float]]]:
    layout = build_layout(entities(snap.inventory, counters, hostname="n", pods={}), counters)
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in render(snap, layout, None).body(Format.TEXT, False, 0).decode().splitlines():
        m = SERIES.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2)))
            out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out


async def test_a100_has_no_gpm_like_the_hardware_and_gr_engine_active_comes_from_nvml_utilisation() -> None:
    sim = SimGpuBackend("a100-sxm4-40gb", 2)
    await sim.open()
    try:
        inv = await sim.inventory()
        assert [g.gpm_supported for g in inv.gpus] == [False, False], "NVML's GPM is Hopper and newer"
        counters = default_counters()
        wanted = counters + tuple(c for c in ALL_PROF if c.spec.name not in {x.spec.name for x in counters})
        collector = Collector(sim, wanted, slow_interval_s=30.0, gpm_prime_interval_s=0.01)
        snap = await collector.sweep(inv)
        assert not any(r in v for v in snap.gpus.values() for r in GPM_READINGS), "no GPM sample on an A100"
        got = body(snap, wanted)
        gr = {s[0]["gpu"]: s[1] for s in got["DCGM_FI_PROF_GR_ENGINE_ACTIVE"]}
        util = {s[0]["gpu"]: s[1] for s in got["DCGM_FI_DEV_GPU_UTIL"]}
        assert gr == {g: u / 100 for g, u in util.items()}
        absent = {n for n in PROF if n not in got}
        assert absent == set(PROF) - {"DCGM_FI_PROF_GR_ENGINE_ACTIVE"}
    finally:
        await sim.close()


async def test_h100_serves_every_profiling_field_from_gpm() -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 1)
    await sim.open()
    try:
        inv = await sim.inventory()
        assert inv.gpus[0].gpm_supported
        snap = await Collector(sim, ALL_PROF, slow_interval_s=30.0, gpm_prime_interval_s=0.01).sweep(inv)
        assert set(body(snap, ALL_PROF)) == set(PROF)
    finally:
        await sim.close()


async def test_missing_profiling_is_a_warning_once_and_in_status(tmp_path: Path) -> None:
    sim = SimGpuBackend("a100-sxm4-40gb", 2)
    await sim.open()
    ctx = make_context(tmp_path, sim, statuses={"driver": Status(Phase.RUNNING)})  # type: ignore[arg-type]
    sub = MetricsSubsystem(ctx)
    try:
        with structlog.testing.capture_logs() as logs:
            await sub.start()
            await sub._sweep()
            await sub._on_inventory(Event(events.INVENTORY_CHANGED, await sim.inventory()))
        warned = [e for e in logs if e["event"] == "metrics_profiling_unavailable"]
        assert len(warned) == 1, logs
        assert "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE" in warned[0]["absent"]
        text = sub.status().details["profiling"]
        assert "GPM" in text and "GPU 0-1" in text and "DCGM_FI_PROF_GR_ENGINE_ACTIVE" in text
        assert any("no GPM" in w for w in (await sub.describe()).warnings), "nodeagent plan says it too"
    finally:
        await sub.stop()
        await sim.close()


async def test_nvlink_bandwidth_on_h100_sxm_is_dcgms_rate_of_nvml_throughput() -> None:
    clock = Clock()
    sim = SimGpuBackend("h100-80gb-hbm3", 2, clock=clock)
    await sim.open()
    try:
        sim.set_workload(0, 90.0)
        sim.set_workload(1, 0.0)
        want = frozenset({Reading.NVLINK_BANDWIDTH_TOTAL})
        first = await sim.sample(SampleRequest(want))
        assert first.gpus[0][Reading.NVLINK_BANDWIDTH_TOTAL] == 0, "DCGM's first value is 0 (no previous sample)"
        clock.now += 30
        second = await sim.sample(SampleRequest(want))
        busy, idle = second.gpus[0][Reading.NVLINK_BANDWIDTH_TOTAL], second.gpus[1][Reading.NVLINK_BANDWIDTH_TOTAL]
        assert idle == 0 and 0 < busy <= 900_000, "MB/s, within the 900 GB/s of NVLink 4"
        assert not math.isnan(busy)
    finally:
        await sim.close()


async def test_mig_instance_series_carry_enc_dec_util_and_fb_reserved() -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 1, mig_layout="3g.40gb*2")
    await sim.open()
    try:
        inv = await sim.inventory()
        snap = await Collector(sim, default_counters(), slow_interval_s=30.0).sweep(inv)
        got = body(snap, default_counters())
        for name in ("DCGM_FI_DEV_ENC_UTIL", "DCGM_FI_DEV_DEC_UTIL", "DCGM_FI_DEV_FB_RESERVED"):
            assert sorted(s[0]["GPU_I_ID"] for s in got.get(name, [])) == ["1", "2"], name
        names = ("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_RESERVED")
        fb = {n: {s[0]["GPU_I_ID"]: s[1] for s in got[n]} for n in names}
        for gi in ("1", "2"):
            total = sum(fb[n][gi] for n in fb)
            assert total == next(m.memory_total_mib for m in inv.gpus[0].mig_devices if str(m.gpu_instance_id) == gi)
    finally:
        await sim.close()


def test_every_default_field_absent_on_mig_instances_is_documented() -> None:
    """docs/parity.md names each default field a MIG instance series lacks, with the reason."""
    doc = (Path(__file__).parents[2] / "docs/parity.md").read_text()
    section = doc.split("**MIG and whole-GPU fields.**", 1)[1].split("\n## ", 1)[0]
    for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_PROF_PCIE_TX_BYTES"):
        assert f"`{name}`" in section, name
    for name in ("DCGM_FI_DEV_ENC_UTIL", "DCGM_FI_DEV_DEC_UTIL", "DCGM_FI_DEV_FB_RESERVED"):
        assert f"`{name}`" in section, f"{name}: say where it comes from on MIG instances"


@pytest.mark.parametrize("noticed_by", ["the sweep", "INVENTORY_CHANGED"])
async def test_profiling_series_are_there_in_the_first_scrape_after_a_mig_change(
    tmp_path: Path, noticed_by: str
) -> None:
    """Whoever notices the new instances first (a sweep sampling devices the inventory lacks, or the MIG
    subsystem's refresh), the first exposition that has them has their profiling series."""
    sim = SimGpuBackend("h100-80gb-hbm3", 1)
    await sim.open()
    ctx = make_context(tmp_path, sim, statuses={"driver": Status(Phase.RUNNING)})  # type: ignore[arg-type]
    sub = MetricsSubsystem(ctx)
    try:
        await sub.start()
        await sub._sweep()
        await sim.set_mig_mode(0, True)
        await sim.reset_gpu(0)
        await sim.create_gpu_instance(0, "3g.40gb")
        await sim.create_gpu_instance(0, "3g.40gb")
        if noticed_by == "INVENTORY_CHANGED":
            inv = await ctx.gpu_state.refresh()
            await sub._on_inventory(Event(events.INVENTORY_CHANGED, inv))
        for _ in range(3):
            await sub._sweep()
            assert sub.snapshot is not None
            got = body(sub.snapshot, default_counters())
            if any("GPU_I_ID" in s[0] for s in got.get("DCGM_FI_DEV_FB_USED", [])):
                break
        else:
            raise AssertionError("the instances never appeared")
        gis = sorted(s[0]["GPU_I_ID"] for s in got.get("DCGM_FI_PROF_GR_ENGINE_ACTIVE", []))
        assert gis == ["1", "2"], "profiling series in the first exposition with the instances"
    finally:
        await sub.stop()
        await sim.close()
