"""dcgm-exporter 4.x parity of the rendered series: device label, Hostname, the XID gauge's err_code /
err_msg, DCGM_EXP_XID_ERRORS_COUNT and DCGM_EXP_CLOCK_EVENTS_COUNT with their windows, clocks event
reasons, NVLink error counters, legacy (1.x) names, and whole-GPU fields on MIG instances.

Expected values come from dcgm-exporter's own collectors (facts, not code): base_collector.go writes
``device="nvidia<gpu index>"``; gpu_collector.go adds ``err_code`` and ``err_msg`` to the XID gauge;
expcollector.go emits, per entity, one series per value seen in the window, or one series of value 0
without the value label; clock_events_collector.go names the bits (power_cap = 0x4, gpu_idle = 0x1).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families as parse_text

from nodeagent.metrics.collector import Collector, Snapshot
from nodeagent.metrics.counters_csv import parse
from nodeagent.metrics.exposition import Format, build_layout, render
from nodeagent.metrics.fields import Counter, default_counters
from nodeagent.metrics.series_labels import MigWholeGpu, entities
from nodeagent.model.gpu import Reading
from tests.metrics.fakes import FakeGpus
from tests.support import require

EXP = parse(
    "DCGM_FI_DEV_POWER_USAGE, gauge, Power draw (in W).\n"
    "DCGM_FI_DEV_XID_ERRORS, gauge, Value of the last XID error encountered.\n"
    "DCGM_EXP_XID_ERRORS_COUNT, counter, reported XIDs during last window\n"
    "DCGM_EXP_CLOCK_EVENTS_COUNT, counter, reported clock events\n"
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS, gauge, clock event reasons\n"
    "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL, counter, flit CRC errors\n"
).counters


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def body_of(snap: Snapshot, counters: tuple[Counter, ...], **kw: str) -> str:
    ents = entities(snap.inventory, counters, hostname="node-a", pods={}, **kw)
    layout = build_layout(ents, counters)
    return render(snap, layout, None).body(Format.TEXT, False, snap.taken_at).decode()


SAMPLE = re.compile(r"^(\w+)\{(.*)\} (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def by_name(body: str, name: str) -> list[dict[str, str]]:
    """Samples of one metric as label dicts with ``value`` (str(float)), in output order."""
    out = []
    for line in body.splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) == name:
            out.append(dict(LABEL.findall(m.group(2)), value=str(float(m.group(3)))))
    assert all(parse_text(body)), "the body parses"
    return out


async def test_device_label_is_nvidia_and_the_gpu_index_not_the_minor() -> None:
    gpus = FakeGpus(2)
    gpus.gpus[1] = replace(gpus.gpus[1], minor_number=7)
    collector = Collector(gpus, default_counters(), slow_interval_s=30.0)
    snap = await collector.sweep(await gpus.inventory())
    devices = {s["gpu"]: s["device"] for s in by_name(body_of(snap, default_counters()), "DCGM_FI_DEV_GPU_TEMP")}
    assert devices == {"0": "nvidia0", "1": "nvidia1"}


async def test_hostname_label_name_follows_the_setting() -> None:
    gpus = FakeGpus(1)
    snap = await Collector(gpus, default_counters(), slow_interval_s=30.0).sweep(await gpus.inventory())
    released = by_name(body_of(snap, default_counters()), "DCGM_FI_DEV_GPU_TEMP")[0]
    renamed = by_name(body_of(snap, default_counters(), hostname_label="hostname"), "DCGM_FI_DEV_GPU_TEMP")[0]
    assert released["Hostname"] == "node-a" and "hostname" not in released
    assert renamed["hostname"] == "node-a" and "Hostname" not in renamed


async def test_xid_gauge_count_window_and_clock_events() -> None:
    gpus = FakeGpus(2)
    gpus.now = 1000.0
    for values in gpus.values.values():
        values[Reading.CLOCK_EVENT_REASONS] = 0x1  # idle
        values[Reading.NVLINK_CRC_FLIT_ERRORS] = 3
    collector = Collector(gpus, EXP, slow_interval_s=1.0, xid_window_ms=60_000, clock_events_window_ms=60_000)
    inventory = await gpus.inventory()

    first = body_of(await collector.sweep(inventory), EXP)
    counts = by_name(first, "DCGM_EXP_XID_ERRORS_COUNT")
    assert [(c["gpu"], c["window_size_in_ms"], c.get("xid"), c["value"]) for c in counts] == [
        ("0", "60000", None, "0.0"),
        ("1", "60000", None, "0.0"),
    ], "no XID in the window: one series of 0 without an xid label"
    xid0 = by_name(first, "DCGM_FI_DEV_XID_ERRORS")[0]
    assert (xid0["err_code"], xid0["err_msg"], xid0["value"]) == ("0", "No Error", "0.0")

    gpus.now = 1010.0
    gpus.inject_xid(0, 79)
    gpus.inject_xid(0, 79)
    gpus.inject_xid(0, 48)
    gpus.values[1][Reading.CLOCK_EVENT_REASONS] = 0x4 | 0x1  # power cap while idle
    second = body_of(await collector.sweep(inventory), EXP)
    counts = {(c["gpu"], c.get("xid")): c["value"] for c in by_name(second, "DCGM_EXP_XID_ERRORS_COUNT")}
    assert counts == {("0", "48"): "1.0", ("0", "79"): "2.0", ("1", None): "0.0"}
    xid0 = by_name(second, "DCGM_FI_DEV_XID_ERRORS")[0]
    assert (xid0["err_code"], xid0["err_msg"]) == ("48", "Double Bit ECC Error")
    events = {(c["gpu"], c["clock_event"]): c["value"] for c in by_name(second, "DCGM_EXP_CLOCK_EVENTS_COUNT")}
    assert events == {("0", "gpu_idle"): "2.0", ("1", "gpu_idle"): "2.0", ("1", "power_cap"): "1.0"}
    reasons = {c["gpu"]: c["value"] for c in by_name(second, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS")}
    assert reasons == {"0": "1.0", "1": "5.0"}
    assert {c["value"] for c in by_name(second, "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL")} == {"3.0"}

    gpus.now = 1075.0  # 65 s after the XIDs: out of the 60 s window
    third = body_of(await collector.sweep(inventory), EXP)
    counts = {(c["gpu"], c.get("xid")): c["value"] for c in by_name(third, "DCGM_EXP_XID_ERRORS_COUNT")}
    assert counts == {("0", None): "0.0", ("1", None): "0.0"}
    xid0 = by_name(third, "DCGM_FI_DEV_XID_ERRORS")[0]
    assert xid0["err_code"] == "48", "the gauge keeps the last XID after the window has passed"
    events = {(c["gpu"], c["clock_event"]): c["value"] for c in by_name(third, "DCGM_EXP_CLOCK_EVENTS_COUNT")}
    assert events == {("0", "gpu_idle"): "1.0", ("1", "gpu_idle"): "1.0", ("1", "power_cap"): "1.0"}


async def test_legacy_names_are_served_under_the_csvs_names() -> None:
    csv = Path(__file__).parent / "data" / "dcgm-exporter" / "1.x-compatibility-metrics.csv"
    counters = parse(csv.read_text()).counters
    gpus = FakeGpus(1)
    snap = await Collector(gpus, counters, slow_interval_s=30.0).sweep(await gpus.inventory())
    body = body_of(snap, counters)
    assert by_name(body, "dcgm_sm_clock")[0]["value"] == "1980.0"
    assert by_name(body, "dcgm_power_usage")[0]["value"] == "78.452"
    assert "DCGM_FI_DEV_SM_CLOCK" not in body


async def test_whole_gpu_fields_on_mig_instances() -> None:
    """dcgm-exporter (DCGM remaps GPU-level fields of a GPU instance to its parent) repeats the GPU's
    power on every instance; first-instance mode keeps sums right. Instance fields are per instance."""
    gpus = FakeGpus(2, migs=4)
    counters = parse(
        "DCGM_FI_DEV_POWER_USAGE, gauge, p\nDCGM_FI_DEV_FB_USED, gauge, f\nDCGM_EXP_XID_ERRORS_COUNT, counter, x\n"
    ).counters
    snap = await Collector(gpus, counters, slow_interval_s=30.0).sweep(await gpus.inventory())
    real_power = sum(v[Reading.POWER_W] for v in gpus.values.values())

    parity = body_of(snap, counters)
    power = by_name(parity, "DCGM_FI_DEV_POWER_USAGE")
    assert len(power) == 8 and {p["GPU_I_ID"] for p in power} == {"7", "8", "9", "10"}
    assert sum(float(p["value"]) for p in power) == 4 * real_power
    assert len(by_name(parity, "DCGM_EXP_XID_ERRORS_COUNT")) == 8

    once = body_of(snap, counters, mig_whole_gpu=MigWholeGpu.FIRST_INSTANCE)
    power = by_name(once, "DCGM_FI_DEV_POWER_USAGE")
    assert [(p["gpu"], p["GPU_I_ID"]) for p in power] == [("0", "7"), ("1", "7")]
    assert sum(float(p["value"]) for p in power) == real_power
    assert len(by_name(once, "DCGM_FI_DEV_FB_USED")) == 8, "instance fields stay on every instance"


async def test_promtool_accepts_every_new_series(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool is not installed")
    assert promtool is not None
    gpus = FakeGpus(2, migs=2)
    for values in gpus.values.values():
        values[Reading.CLOCK_EVENT_REASONS] = 0x5
    gpus.inject_xid(1, 13)
    csvs = Path(__file__).parent / "data" / "dcgm-exporter"
    sets = [EXP, *(parse((csvs / n).read_text()).counters for n in sorted(p.name for p in csvs.glob("*.csv")))]
    for counters in sets:
        snap = await Collector(gpus, counters, slow_interval_s=30.0).sweep(await gpus.inventory())
        for kw in ({}, {"hostname_label": "hostname", "mig_whole_gpu": MigWholeGpu.FIRST_INSTANCE}):
            body = body_of(snap, counters, **kw).encode()
            result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, check=False)
            output = (result.stdout + result.stderr).decode()
            assert result.returncode in (0, 3), output  # 3: style findings on dcgm-exporter's names only
            accepted = ("not 'camelCase'", 'should have "_total" suffix', "should not include type 'counter'")
            problems = [ln for ln in output.splitlines() if ln.strip() and not ln.endswith(accepted)]
            assert not problems, problems
