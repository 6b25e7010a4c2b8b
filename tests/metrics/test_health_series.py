"""DCGM_EXP_GPU_HEALTH_STATUS in the metrics subsystem (issue 23, points 9, 18, 21).

Facts from dcgm-exporter (github.com/NVIDIA/dcgm-exporter): etc/default-counters.csv lists the field
commented out (the default set has no health series); internal/pkg/collector/gpu_health_collector.go emits
one series per GPU and health watch only when the counters name it; its series are rendered with the same
template as every GPU series (internal/pkg/rendermetrics/render_metrics.go), the extra labels sorted by
name (health_error_code, health_watch).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from nodeagent import events
from nodeagent.gpuhealth.subsystem import GpuHealthSubsystem
from nodeagent.metrics.exposition import Format
from nodeagent.metrics.subsystem import MetricsSubsystem
from nodeagent.model.health import GpuHealthReport, GpuIncident, NodeGpuHealth, Verdict
from nodeagent.subsystem import Context, Phase, Status
from tests.metrics.fakes import FakeGpus, make_context

HEALTH = "DCGM_EXP_GPU_HEALTH_STATUS"
WATCHES = ("PCIE", "NVLINK", "PMU", "MCU", "MEM", "SM", "INFOROM", "THERMAL", "POWER", "DRIVER", "ALL")
"""gpu_health_collector.go's gpuHealthChecks, in its order."""
CSV = (
    "DCGM_FI_DEV_GPU_TEMP, gauge, GPU temperature (in C).\n"
    "DCGM_EXP_GPU_HEALTH_STATUS, counter, DCGM reported health status\n"
)
SERIES = re.compile(r"^(\w+)\{(.*)\} (\S+)$")


def series(sub: MetricsSubsystem, name: str) -> list[tuple[list[str], dict[str, str], float]]:
    """(label names in order, labels, value) of each sample of ``name`` in the served body."""
    assert sub.exposition is not None
    out = []
    for line in sub.exposition.body(Format.TEXT, False, 0.0).decode().splitlines():
        m = SERIES.match(line)
        if m and m.group(1) == name:
            pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2))
            out.append(([k for k, _ in pairs], dict(pairs), float(m.group(3))))
    return out


def context(tmp_path: Path, csv: str | None = None, **env: str) -> Context:
    extra = dict(env)
    if csv is not None:
        (tmp_path / "counters.csv").write_text(csv)
        extra["NODEAGENT_METRICS__COUNTERS_CSV"] = str(tmp_path / "counters.csv")
    return make_context(tmp_path, FakeGpus(2), env=extra, statuses={"driver": Status(Phase.RUNNING)})


async def started(ctx: Context) -> tuple[GpuHealthSubsystem, MetricsSubsystem]:
    health = GpuHealthSubsystem(ctx)
    metrics = MetricsSubsystem(ctx)
    await health.start()
    await metrics.start()
    return health, metrics


async def test_the_default_set_has_no_health_series_as_dcgm_exporters_default(tmp_path: Path) -> None:
    health, metrics = await started(context(tmp_path))
    try:
        assert series(metrics, "DCGM_FI_DEV_GPU_TEMP"), "the default set is served"
        assert series(metrics, HEALTH) == [], "default-counters.csv lists it commented out"
    finally:
        await metrics.stop()
        await health.stop()


async def test_the_csv_selects_health_series_with_the_same_labels_as_every_series(tmp_path: Path) -> None:
    health, metrics = await started(context(tmp_path, CSV, NODEAGENT_METRICS__HOSTNAME_LABEL="hostname"))
    try:
        got = series(metrics, HEALTH)
        assert len(got) == 2 * len(WATCHES)
        temp = {s[1]["gpu"]: s[0] for s in series(metrics, "DCGM_FI_DEV_GPU_TEMP")}
        for names, labels, value in got:
            assert names == [*temp[labels["gpu"]], "health_error_code", "health_watch"], names
            assert labels["hostname"] == "node-a" and "Hostname" not in labels
            assert value == 0 and labels["health_error_code"] == "DCGM_FR_OK"
        assert [s[1]["health_watch"] for s in got if s[1]["gpu"] == "0"] == list(WATCHES)
    finally:
        await metrics.stop()
        await health.stop()


async def test_the_series_change_with_the_published_verdict_not_at_the_next_sweep(tmp_path: Path) -> None:
    ctx = context(tmp_path, CSV, NODEAGENT_METRICS__INTERVAL_S="3600", NODEAGENT_METRICS__SLOW_INTERVAL_S="3600")
    metrics = MetricsSubsystem(ctx)
    await metrics.start()
    stop = asyncio.Event()
    task = asyncio.create_task(metrics.run(stop))
    try:
        inv = await ctx.gpu_state.current()
        sweeps = len(ctx.backends.gpus.requests)  # type: ignore[attr-defined]
        fail = GpuIncident("ALL", "DCGM_FR_FALLEN_OFF_BUS", Verdict.FAIL, "XidFallenOffBus", "fell off the bus")
        report = NodeGpuHealth((GpuHealthReport(0, inv.gpus[0].uuid, (fail,)), GpuHealthReport(1, inv.gpus[1].uuid)))
        healthy = NodeGpuHealth((GpuHealthReport(0, inv.gpus[0].uuid), GpuHealthReport(1, inv.gpus[1].uuid)))
        for published in (healthy, report):  # the second one reaches the running loop as an event
            metrics.rendered.clear()
            ctx.bus.publish(events.NODE_GPU_HEALTH, published)
            await asyncio.wait_for(metrics.rendered.wait(), 10)
        values = {
            (s[1]["gpu"], s[1]["health_watch"]): (s[2], s[1]["health_error_code"]) for s in series(metrics, HEALTH)
        }
        assert values[("0", "ALL")] == (20, "DCGM_FR_FALLEN_OFF_BUS")
        assert values[("1", "ALL")] == (0, "DCGM_FR_OK")
        assert len(ctx.backends.gpus.requests) == sweeps, "re-rendered from the last sample, no sweep"
    finally:
        stop.set()
        await task
        await metrics.stop()
