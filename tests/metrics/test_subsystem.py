"""The metrics subsystem end to end with a fake GPU backend: /metrics served from the cache, content
negotiation, the agent's own metrics, pod labels from a stand-in kubelet, status reasons."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from nodeagent import events
from nodeagent.errors import ConfigError
from nodeagent.metrics.subsystem import MetricsSubsystem
from nodeagent.subsystem import Context, Phase, Status
from tests.metrics.exposition_helpers import samples
from tests.metrics.fakes import FakeGpus, make_context
from tests.metrics.kubelet import KubeletStandIn, PodDevice, serve, shutdown

PROMETHEUS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}


async def client_for(ctx: Context) -> TestClient:  # type: ignore[type-arg]
    app = web.Application()
    for (method, path), handler in ctx.routes.items():
        app.router.add_route(method, path, handler)
    client: TestClient = TestClient(TestServer(app))  # type: ignore[type-arg]
    await client.start_server()
    return client


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[MetricsSubsystem, FakeGpus, TestClient]]:  # type: ignore[type-arg]
    gpus = FakeGpus(2)
    ctx = make_context(tmp_path, gpus, statuses={"driver": Status(Phase.RUNNING), "runtime": Status(Phase.FAILED)})
    sub = MetricsSubsystem(ctx)
    client = await client_for(ctx)
    await sub.start()
    yield sub, gpus, client
    await sub.stop()
    await client.close()


async def test_route_is_registered_and_503_before_the_first_sweep(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, FakeGpus(1))
    MetricsSubsystem(ctx)
    assert list(ctx.routes) == [("GET", "/metrics")]
    client = await client_for(ctx)
    try:
        resp = await client.get("/metrics")
        assert resp.status == 503
    finally:
        await client.close()


async def test_scrapes_are_served_from_the_cache(running) -> None:  # type: ignore[no-untyped-def]
    _sub, gpus, client = running
    hops = len(gpus.requests)
    inventory_calls = gpus.inventory_calls
    for _ in range(5):
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        await resp.read()
    assert len(gpus.requests) == hops, "a scrape never reaches the GPU backend"
    assert gpus.inventory_calls == inventory_calls


async def test_prometheus_gets_openmetrics_gzip(running) -> None:  # type: ignore[no-untyped-def]
    _sub, _gpus, client = running
    resp = await client.get("/metrics", headers=PROMETHEUS, auto_decompress=False)
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert resp.headers["Content-Encoding"] == "gzip"
    body = gzip.decompress(await resp.read()).decode()
    assert body.endswith("# EOF\n")
    names = {f.name for f in parse_openmetrics(body)}
    assert {"DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_FB_USED", "nodeagent_snapshot_age_seconds"} <= names


async def test_agent_metrics_are_in_the_same_response(running) -> None:  # type: ignore[no-untyped-def]
    sub, gpus, client = running
    gpus.inject_xid(1, 79)
    gpus.failures = {"nvmlDeviceGetPowerUsage": 2}
    await sub._sweep()
    text = await (await client.get("/metrics")).text()
    got = samples(parse_text(text))
    assert got[("nodeagent_subsystem_up", (("subsystem", "driver"),))] == 1
    assert got[("nodeagent_subsystem_up", (("subsystem", "runtime"),))] == 0
    assert got[("nodeagent_xid_errors_total", (("xid", "79"),))] == 1
    assert got[("nodeagent_nvml_call_failures_total", (("call", "nvmlDeviceGetPowerUsage"),))] == 2
    assert ("nodeagent_collection_duration_seconds", ()) in got
    xid = {dict(k[1])["gpu"]: v for k, v in got.items() if k[0] == "DCGM_FI_DEV_XID_ERRORS"}
    assert xid == {"0": 0, "1": 79}
    assert sub.ctx.bus.last(events.XID).xid == 79


async def test_snapshot_age_is_current_at_each_scrape(running) -> None:  # type: ignore[no-untyped-def]
    sub, _gpus, client = running
    assert sub.exposition is not None
    sub.exposition.taken_at -= 42  # as if the sweep had happened 42 s ago
    for headers in ({}, PROMETHEUS):
        resp = await client.get("/metrics", headers=headers)
        text = (await resp.read()).decode()
        age = next(line for line in text.splitlines() if line.startswith("nodeagent_snapshot_age_seconds "))
        assert 42 <= float(age.split()[1]) < 60


async def test_no_kubelet_socket_keeps_running_with_a_reason(running) -> None:  # type: ignore[no-untyped-def]
    sub, _gpus, client = running
    status = sub.status()
    assert status.phase is Phase.RUNNING
    assert status.details["pod_attribution"] == "off: no kubelet socket at /run/k.sock"
    text = await (await client.get("/metrics")).text()
    assert 'pod="' not in text


async def test_pod_labels_from_the_kubelet_without_calls_per_scrape(tmp_path: Path) -> None:
    gpus = FakeGpus(2, migs=2)
    ctx = make_context(tmp_path, gpus)
    inv = await gpus.inventory()
    (tmp_path / "root/run").mkdir()
    service = KubeletStandIn(
        pods=[PodDevice("ml", "train-0", "worker", "nvidia.com/mig-1g.10gb", [inv.gpus[1].mig_devices[1].uuid])]
    )
    server = await serve(str(tmp_path / "root/run/k.sock"), service)
    sub = MetricsSubsystem(ctx)
    client = await client_for(ctx)
    try:
        await sub.start()
        assert sub.status().details["pod_attribution"] == "on: 1 devices in use by pods"
        for _ in range(3):
            text = await (await client.get("/metrics")).text()
        assert service.calls == 1, "the kubelet is asked on its own cadence, never per scrape"
        fb = [s for f in parse_text(text) if f.name == "DCGM_FI_DEV_FB_USED" for s in f.samples]
        owned = [s.labels for s in fb if "pod" in s.labels]
        assert len(fb) == 4 and len(owned) == 1
        assert owned[0]["gpu"] == "1" and owned[0]["GPU_I_ID"] == "8"
        assert (owned[0]["pod"], owned[0]["namespace"], owned[0]["container"]) == ("train-0", "ml", "worker")
        # the kubelet goes away: labels drop at the next refresh, status says why, still running
        await shutdown(server)
        (tmp_path / "root/run/k.sock").unlink()
        await sub._refresh_pods()
        await sub._sweep()
        text = await (await client.get("/metrics")).text()
        assert 'pod="' not in text
        assert sub.status().phase is Phase.RUNNING
        assert sub.status().details["pod_attribution"].startswith("off: no kubelet socket")
    finally:
        await sub.stop()
        await client.close()
        server.close()


async def test_bad_counters_csv_fails_start_naming_the_line(tmp_path: Path) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text("DCGM_FI_DEV_GPU_TEMP, gauge, t\nDCGM_FI_DEV_BOGUS, gauge, t\n")
    ctx = make_context(tmp_path, FakeGpus(1), env={"NODEAGENT_METRICS__COUNTERS_CSV": str(csv)})
    sub = MetricsSubsystem(ctx)
    with pytest.raises(ConfigError, match=r"c\.csv:2: unknown DCGM field DCGM_FI_DEV_BOGUS"):
        await sub.start()
    plan = await sub.describe()
    assert ":2:" in plan.error and "DCGM_FI_DEV_BOGUS" in plan.error


async def test_custom_csv_selects_the_series(tmp_path: Path) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text("# mine\nDCGM_FI_DEV_GPU_TEMP, gauge, t\nDCGM_FI_DEV_SLOWDOWN_TEMP, gauge, s\n")
    ctx = make_context(tmp_path, FakeGpus(1), env={"NODEAGENT_METRICS__COUNTERS_CSV": str(csv)})
    sub = MetricsSubsystem(ctx)
    client = await client_for(ctx)
    try:
        await sub.start()
        text = await (await client.get("/metrics")).text()
        dcgm = {f.name for f in parse_text(text) if f.name.startswith("DCGM_")}
        assert dcgm == {"DCGM_FI_DEV_GPU_TEMP"}
        plan = await sub.describe()
        assert plan.empty and not plan.error
        assert any("DCGM_FI_DEV_SLOWDOWN_TEMP (line 3)" in w for w in plan.warnings)
    finally:
        await sub.stop()
        await client.close()


async def test_degraded_gpu_marks_the_subsystem_degraded_not_failed(running) -> None:  # type: ignore[no-untyped-def]
    from nodeagent.model.gpu import GpuHealthState

    sub, gpus, _client = running
    gpus.health[1] = GpuHealthState.LOST
    await sub._sweep()
    assert sub.status().phase is Phase.DEGRADED
    assert sub.status().reason == "gpu 1 lost"
    gpus.health.clear()
    await sub._sweep()
    assert sub.status().phase is Phase.RUNNING


async def test_mig_change_from_the_bus_relabels(running) -> None:  # type: ignore[no-untyped-def]
    sub, gpus, client = running
    task = asyncio.create_task(sub._watch_inventory(asyncio.Event()))
    await asyncio.sleep(0)
    gpus.set_migs(0, 2)
    sub.ctx.bus.publish(events.MIG_CHANGED, await gpus.inventory())
    for _ in range(10):
        await asyncio.sleep(0)
    task.cancel()
    await sub._sweep()
    text = await (await client.get("/metrics")).text()
    ids = sorted(
        s.labels.get("GPU_I_ID", "-") for f in parse_text(text) if f.name == "DCGM_FI_DEV_FB_USED" for s in f.samples
    )
    assert ids == ["-", "7", "8"]


async def test_unlabelled_devices_in_a_sample_refresh_the_inventory(running) -> None:  # type: ignore[no-untyped-def]
    sub, gpus, client = running
    gpus.set_migs(1, 1)  # the backend changed MIG, nobody published it yet
    calls = gpus.inventory_calls
    await sub._sweep()
    assert gpus.inventory_calls == calls + 1
    await sub._sweep()
    assert gpus.inventory_calls == calls + 1
    text = await (await client.get("/metrics")).text()
    assert 'GPU_I_ID="7"' in text


async def test_run_sweeps_on_its_interval_and_stops(tmp_path: Path) -> None:
    gpus = FakeGpus(1)
    ctx = make_context(
        tmp_path, gpus, env={"NODEAGENT_METRICS__INTERVAL_S": "1", "NODEAGENT_METRICS__SLOW_INTERVAL_S": "1"}
    )
    sub = MetricsSubsystem(ctx)
    await sub.start()
    stop = asyncio.Event()
    owner = asyncio.create_task(ctx.gpu_state.run(stop))  # the agent's GPU-state task: it sweeps
    task = asyncio.create_task(sub.run(stop))
    first = sub.exposition
    deadline = asyncio.get_running_loop().time() + 5
    while sub.exposition is first and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert sub.exposition is not first, "a new snapshot within the interval"
    stop.set()
    await asyncio.wait_for(task, 3)
    await asyncio.wait_for(owner, 3)
    await sub.stop()
    assert ctx.gpu_state.registrations == (), "its needs went with it"
    assert sub.status().phase is Phase.STOPPED
    assert "nodeagent_collection_duration_seconds" not in {m.name for m in ctx.registry.collect()}, "unregistered"


async def test_restart_registers_again(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, FakeGpus(1))
    sub = MetricsSubsystem(ctx)
    await sub.start()
    await sub.stop()
    await sub.start()
    assert "nodeagent_collection_duration_seconds" in {m.name for m in ctx.registry.collect()}
    await sub.stop()
