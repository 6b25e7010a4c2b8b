"""The renderer: exact text, OpenMetrics, MIG series, labels, absent fields, gzip and negotiation."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from nodeagent.metrics.collector import Collector, Snapshot
from nodeagent.metrics.counters_csv import parse
from nodeagent.metrics.exposition import Format, build_layout, format_value, negotiate, render
from nodeagent.metrics.fields import FIELDS, default_counters
from nodeagent.metrics.fields import Counter as FieldCounter
from nodeagent.metrics.series_labels import MAX_LABELS, PodRef, entities
from nodeagent.model.gpu import Reading
from tests.metrics.fakes import FakeGpus
from tests.support import require

SMALL = parse(
    "DCGM_FI_DEV_GPU_TEMP, gauge, GPU temperature (in C).\n"
    "DCGM_FI_DEV_MEMORY_TEMP, gauge, Memory temperature (in C).\n"
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, counter, Energy.\n"
    "DCGM_FI_DRIVER_VERSION, label, Driver.\n"
).counters


async def snapshot(gpus: FakeGpus, counters: tuple[FieldCounter, ...] = default_counters()) -> Snapshot:
    collector = Collector(gpus, counters, slow_interval_s=30.0, clock=lambda: 0.0)
    return await collector.sweep(await gpus.inventory())


def layout_for(snap: Snapshot, counters: tuple[FieldCounter, ...], pods: dict | None = None):  # type: ignore[no-untyped-def,type-arg]
    ents = entities(snap.inventory, counters, hostname="node-a", pods=pods or {})
    return build_layout(ents, counters)


async def test_exact_text_format() -> None:
    gpus = FakeGpus(1)
    del gpus.values[0][Reading.MEMORY_TEMP_C]
    snap = await snapshot(gpus, SMALL)
    body = render(snap, layout_for(snap, SMALL), None).body(Format.TEXT, False, snap.taken_at + 1.5).decode()
    labels = (
        'gpu="0",UUID="GPU-07ad00dd-2cf1-3178-492d-1bffa49e5000",pci_bus_id="00000000:18:00.0",'
        'device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node-a",DCGM_FI_DRIVER_VERSION="580.159.04"'
    )
    assert body == (
        "# HELP nodeagent_snapshot_age_seconds Seconds since the served GPU readings were sampled.\n"
        "# TYPE nodeagent_snapshot_age_seconds gauge\n"
        "nodeagent_snapshot_age_seconds 1.500\n"
        "# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).\n"
        "# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n"
        f"DCGM_FI_DEV_GPU_TEMP{{{labels}}} 50\n"
        "# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Energy.\n"
        "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n"
        f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{labels}}} 2528108\n"
    ), "an unsupported field (memory temperature) is absent, not 0"


async def test_openmetrics_types_counters_unknown_and_ends_with_eof() -> None:
    snap = await snapshot(FakeGpus(1), SMALL)
    body = render(snap, layout_for(snap, SMALL), None).body(Format.OPENMETRICS, False, snap.taken_at).decode()
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION unknown\n" in body
    assert "# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n" in body
    assert body.endswith("\n# EOF\n") and body.count("# EOF") == 1
    assert "\nnodeagent_snapshot_age_seconds 0.000\n" in body
    families = {f.name: f for f in parse_openmetrics(body)}
    assert families["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].samples[0].name == "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"


async def test_default_set_parses_in_both_formats_with_registry_metrics() -> None:
    registry = CollectorRegistry()
    Counter("nodeagent_things", "Things.", registry=registry).inc(3)
    snap = await snapshot(FakeGpus(2))
    exp = render(snap, layout_for(snap, default_counters()), registry)
    text = exp.body(Format.TEXT, False, snap.taken_at).decode()
    om = exp.body(Format.OPENMETRICS, False, snap.taken_at).decode()
    text_names = {f.name for f in parse_text(text)}
    om_names = {f.name for f in parse_openmetrics(om)}
    assert "DCGM_FI_DEV_FB_USED" in text_names and "DCGM_FI_DEV_FB_USED" in om_names
    assert "nodeagent_things" in text_names and "nodeagent_things" in om_names
    assert om.count("# EOF") == 1 and om.endswith("# EOF\n")
    # absent on the H100 probe (NotSupported): never rendered as 0
    assert "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL" not in text_names
    assert "DCGM_FI_DEV_VGPU_LICENSE_STATUS" not in text_names


async def test_mig_series() -> None:
    gpus = FakeGpus(2, migs=2)
    snap = await snapshot(gpus)
    text = render(snap, layout_for(snap, default_counters()), None).body(Format.TEXT, False, 0).decode()
    families = {f.name: f for f in parse_text(text)}
    fb = families["DCGM_FI_DEV_FB_USED"].samples
    assert len(fb) == 4
    first = fb[0]
    assert first.labels["GPU_I_PROFILE"] == "1g.10gb" and first.labels["GPU_I_ID"] == "7"
    assert first.labels["UUID"] == gpus.gpus[0].uuid, "MIG series carry the parent UUID"
    assert first.value == 984, "framebuffer is per instance"
    temps = families["DCGM_FI_DEV_GPU_TEMP"].samples
    assert [s.value for s in temps] == [50] * 4, "device-wide values repeat on each instance"
    assert "DCGM_FI_DEV_GPU_UTIL" not in families, "GPU_UTIL is not reported for MIG instances"
    gr = {(s.labels["gpu"], s.labels["GPU_I_ID"]): s.value for s in families["DCGM_FI_PROF_GR_ENGINE_ACTIVE"].samples}
    assert gr == {("0", "7"): 0.75, ("0", "8"): 0.75, ("1", "7"): 0.75, ("1", "8"): 0.75}
    assert "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE" not in families, "not reported per instance by this backend"


async def test_gpu_with_mig_enabled_but_no_instances_is_exposed_whole() -> None:
    gpus = FakeGpus(1, migs=0)
    gpus.gpus[0] = replace(gpus.gpus[0], mig_enabled=True)
    snap = await snapshot(gpus)
    text = render(snap, layout_for(snap, default_counters()), None).body(Format.TEXT, False, 0).decode()
    (sample,) = next(f for f in parse_text(text) if f.name == "DCGM_FI_DEV_GPU_UTIL").samples
    assert "GPU_I_ID" not in sample.labels


async def test_xid_gauge_holds_the_last_xid() -> None:
    gpus = FakeGpus(2)
    collector = Collector(gpus, default_counters(), slow_interval_s=30.0, clock=lambda: 0.0)
    inv = await gpus.inventory()
    await collector.sweep(inv)
    gpus.inject_xid(1, 79)
    snap = await collector.sweep(inv)
    text = render(snap, layout_for(snap, default_counters()), None).body(Format.TEXT, False, 0).decode()
    xid = {
        s.labels["gpu"]: s.value
        for s in next(f for f in parse_text(text) if f.name == "DCGM_FI_DEV_XID_ERRORS").samples
    }
    assert xid == {"0": 0, "1": 79}


async def test_pod_labels_and_label_budget() -> None:
    gpus = FakeGpus(2, migs=2)
    every_label = tuple(c for c in parse("\n".join(f"{n}, {f.kind}, x" for n, f in FIELDS.items())).counters)
    snap = await snapshot(gpus, every_label)
    pods = {(0, 8): PodRef("train-1", "ml", "worker"), 1: PodRef("whole", "ml", "main")}
    layout = layout_for(snap, every_label, pods)
    text = render(snap, layout, None).body(Format.TEXT, False, 0).decode()
    for family in parse_text(text):
        for s in family.samples:
            assert len(s.labels) < 20
    assert MAX_LABELS < 20
    fb = {
        (s.labels["gpu"], s.labels["GPU_I_ID"]): s.labels
        for s in next(f for f in parse_text(text) if f.name == "DCGM_FI_DEV_FB_USED").samples
    }
    assert "pod" not in fb[("0", "7")]
    assert (fb[("0", "8")]["pod"], fb[("0", "8")]["namespace"], fb[("0", "8")]["container"]) == (
        "train-1",
        "ml",
        "worker",
    )
    assert fb[("1", "7")]["pod"] == "whole", "instances of a GPU held whole by a pod belong to that pod"
    assert fb[("0", "7")]["DCGM_FI_DEV_SERIAL"] == gpus.gpus[0].serial


async def test_label_values_are_escaped() -> None:
    gpus = FakeGpus(1)
    snap = await snapshot(gpus, SMALL)
    ents = entities(snap.inventory, SMALL, hostname='we"ird\\host\nname', pods={})
    text = render(snap, build_layout(ents, SMALL), None).body(Format.TEXT, False, 0).decode()
    assert 'Hostname="we\\"ird\\\\host\\nname"' in text
    (sample,) = next(f for f in parse_text(text) if f.name == "DCGM_FI_DEV_GPU_TEMP").samples
    assert sample.labels["Hostname"] == 'we"ird\\host\nname'


async def test_gzip_is_one_stream_with_a_current_tail() -> None:
    snap = await snapshot(FakeGpus(8, migs=7))
    exp = render(snap, layout_for(snap, default_counters()), None)
    for fmt in Format:
        for age in (0.25, 12.0):
            zipped = exp.body(fmt, True, snap.taken_at + age)
            assert zipped[:2] == b"\x1f\x8b"
            plain = exp.body(fmt, False, snap.taken_at + age)
            # the same lines; uncompressed the age family goes first, compressed last (see Exposition)
            assert sorted(gzip.decompress(zipped).splitlines()) == sorted(plain.splitlines())
            assert gzip.decompress(zipped).endswith(b"# EOF\n" if fmt is Format.OPENMETRICS else b"\n")
            import zlib

            d = zlib.decompressobj(31)
            assert sorted(d.decompress(zipped).splitlines()) == sorted(plain.splitlines())
            assert d.eof and d.unused_data == b"", "a single gzip member, readable by any client"
    plain = exp.body(Format.TEXT, False, snap.taken_at)
    assert len(exp.body(Format.TEXT, True, snap.taken_at)) < len(plain) / 10


def test_format_value() -> None:
    assert format_value(50) == "50"
    assert format_value(50.0) == "50"
    assert format_value(0.125) == "0.125"
    assert format_value(1e20) == "1e+20"
    assert format_value(float("nan")) == "NaN"
    assert format_value(float("inf")) == "+Inf"
    assert format_value(float("-inf")) == "-Inf"


PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@pytest.mark.parametrize(
    ("accept", "encoding", "expected"),
    [
        (PROMETHEUS_ACCEPT, "gzip", (Format.OPENMETRICS, True)),
        ("", "", (Format.TEXT, False)),
        ("*/*", "gzip, deflate, br", (Format.TEXT, True)),
        ("text/plain;version=0.0.4", "gzip;q=0", (Format.TEXT, False)),
        ("application/openmetrics-text; version=1.0.0", "identity", (Format.OPENMETRICS, False)),
        ("application/openmetrics-text;version=2.0.0,text/plain;q=0.5", "", (Format.TEXT, False)),
        ("application/openmetrics-text;q=0.2,text/plain;q=0.5", "", (Format.TEXT, False)),
        ("application/openmetrics-text;q=0", "GZIP", (Format.TEXT, True)),
    ],
)
def test_negotiation(accept: str, encoding: str, expected: tuple[Format, bool]) -> None:
    assert negotiate(accept, encoding) == expected


async def test_promtool_accepts_the_output(tmp_path: object) -> None:
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool is not installed")
    assert promtool is not None
    registry = CollectorRegistry()
    Counter("nodeagent_things", "Things.", registry=registry).inc()
    for gpus in (FakeGpus(8), FakeGpus(8, migs=7)):
        snap = await snapshot(gpus)
        body = render(snap, layout_for(snap, default_counters()), registry).body(Format.TEXT, False, snap.taken_at)
        result = subprocess.run(
            [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
        )
        output = (result.stdout + result.stderr).decode()
        assert result.returncode in (0, 3), output  # 1: the text did not parse; 3: lint findings only
        # dcgm-exporter's own names break promtool's style rules (camelCase labels, counters without
        # _total); users' dashboards need exactly those names. Our own metrics must lint clean.
        accepted = (
            "label names should be written in 'snake_case' not 'camelCase'",
            'should have "_total" suffix',
            "metric name should not include type 'counter'",  # DCGM_FI_DEV_PCIE_REPLAY_COUNTER
        )
        problems = [line for line in output.splitlines() if line.strip() and not line.endswith(accepted)]
        assert not problems, problems
        assert all(line.startswith("DCGM_") for line in output.splitlines() if line.strip())
