"""The kubelet's DRAResourceHealth stream (KEP-4680, v1alpha1) on the DRA plugin's dra.sock, read by the stand-in
kubelet as the 1.34 kubelet reads it: every device in every message, a change at once, the list again every
``dra.health_resend_s``, a clean end when the plugin stops, any number of watchers, lost and unreadable GPUs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nodeagent import events
from nodeagent.backends.dra_health_server import DeviceHealth, Health, HealthFeed
from nodeagent.backends.dra_server import ClaimRef, DraPluginServer, PrepareResult
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.dra import devices, resource_health
from nodeagent.errors import ConfigError
from nodeagent.gpuhealth.book import HealthBook
from nodeagent.model.gpu import GpuHealthState, Reading, SampleRequest, XidEvent
from nodeagent.settings import Settings, load, replace
from nodeagent.testing.apiserver import TestApiServer
from nodeagent.testing.kubelet_dra import KubeletDra, grpc_health, pb_health
from tests.deviceplugin.support import inventory
from tests.dra.support import DRIVER, REG_SOCKET, claim, running, settings, until

POOL = "node-a"
SLOW = 25.0
"""A resend period no test waits for: what arrives sooner came from a change."""


def _s(resend_s: float = SLOW, window_s: float = 30.0) -> Settings:
    s = replace(settings(), "dra", health_resend_s=resend_s)
    return replace(s, "gpuhealth", xid_window_s=window_s, min_publish_interval_s=0.0)


def _health(message: list[tuple[str, str, str, int]]) -> dict[str, str]:
    return {device: health for _, device, health, _ in message}


async def test_every_message_lists_every_published_device_and_an_xid_is_sent_at_once(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    try:
        async with running(tmp_path, apiserver, sim=sim, s=_s()) as r, r.kubelet.watching(DRIVER) as watch:
            await until(lambda: len(watch.messages) == 1, "the first message at once")
            names = [d.name for d in r.plugin.published]
            assert names == ["gpu-0", "gpu-1"]
            assert watch.messages[0] == [(POOL, n, "Healthy", watch.messages[0][0][3]) for n in names]
            assert r.kubelet.health_of(DRIVER, POOL, "gpu-1") == "Healthy"
            await r.ctx.gpu_state.started.wait()
            sim.inject_xid(1, 79)
            # well before the 25 s resend: the change itself was pushed
            await until(lambda: r.kubelet.health_of(DRIVER, POOL, "gpu-1") == "Unhealthy", "gpu-1 Unhealthy", 3.0)
            assert all([(p, d) for p, d, _, _ in m] == [(POOL, n) for n in names] for m in watch.messages)
            assert _health(watch.messages[-1]) == {"gpu-0": "Healthy", "gpu-1": "Unhealthy"}
            assert watch.changed[-1] == (f"{POOL}/gpu-1", "Unhealthy")
            (why,) = r.plugin.status().details["health"].values()  # the reason, kept on the plugin's side
            assert why.startswith("Unhealthy: ") and "79" in why
            assert r.plugin.status().details["health_streams"] == 1
    finally:
        await sim.close()


async def test_mig_devices_are_listed_and_an_instance_xid_marks_that_mig_device_only(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    inv = await inventory(2, mig_layout="1g.10gb*7")
    async with running(tmp_path, apiserver, inv=inv, s=_s()) as r, r.kubelet.watching(DRIVER) as watch:
        await until(lambda: len(watch.messages) >= 1, "the first message")
        listed = [d for _, d, _, _ in watch.messages[-1]]
        assert listed == [d.name for d in r.plugin.published] and len(listed) > 2
        mig = next(d for d in r.plugin.published if d.kind == "mig")
        r.ctx.bus.publish(events.XID, XidEvent(mig.gpu_index, mig.uuid, 48, 0.0, gpu_instance_id=mig.gpu_instance_id))
        await until(lambda: _health(watch.messages[-1]).get(mig.name) == "Unhealthy", "the MIG device Unhealthy")
        unhealthy = {d for d, h in _health(watch.messages[-1]).items() if h != "Healthy"}
        assert unhealthy == {mig.name}


async def test_the_list_is_sent_again_every_resend_period_without_a_change(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    async with running(tmp_path, apiserver, s=_s(resend_s=1.0)) as r, r.kubelet.watching(DRIVER) as watch:
        await until(lambda: len(watch.messages) >= 3, "two resends", timeout_s=5.0)
        assert len({tuple((p, d, h) for p, d, h, _ in m) for m in watch.messages}) == 1  # unchanged
        assert watch.opened == 1 and watch.ends == []
        assert r.plugin.server.health.changes == 1  # only the first list was a change


async def test_a_device_the_plugin_stops_listing_reads_unknown_after_the_kubelets_timeout(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    """The stand-in's own rule (the kubelet's 30 s timeout, shortened): without resends a device goes Unknown."""
    async with running(tmp_path, apiserver, s=_s()) as r:
        r.kubelet.health_timeout_s = 0.3
        async with r.kubelet.watching(DRIVER) as watch:
            await until(lambda: len(watch.messages) == 1, "the first message")
            assert r.kubelet.health_of(DRIVER, POOL, "gpu-0") == "Healthy"
            await until(lambda: r.kubelet.health_of(DRIVER, POOL, "gpu-0") == "Unknown", "timed out", 2.0)


async def test_stopping_the_plugin_ends_the_stream_cleanly_and_the_kubelet_forgets_the_health(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    async with running(tmp_path, apiserver, s=_s()) as r, r.kubelet.watching(DRIVER) as watch:
        await until(lambda: len(watch.messages) == 1 and r.plugin.server.health.streams == 1, "the stream")
        await r.plugin.server.stop()
        await until(lambda: bool(watch.ends), "the stream's end", timeout_s=2.0)
        assert watch.ends == ["eof"]  # a clean end (status OK), not an error or a hung stream
        assert r.kubelet.health_of(DRIVER, POOL, "gpu-0") == "Unknown"
        assert r.plugin.server.health.streams == 0


async def test_the_kubelet_opens_a_new_stream_after_one_ends_and_gets_the_list_at_once(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    async with running(tmp_path, apiserver, s=_s()) as r:
        r.kubelet.health_retry_s = 0.1
        async with r.kubelet.watching(DRIVER) as watch:
            await until(lambda: len(watch.messages) == 1, "the first stream's message")
            await r.plugin.server.stop()
            await until(lambda: r.plugin.server.serving, "served again (the plugin's socket check)", 15.0)
            await until(lambda: watch.opened == 2 and len(watch.messages) == 2, "the second stream's message")
            assert r.kubelet.health_of(DRIVER, POOL, "gpu-1") == "Healthy"


async def test_a_second_watcher_gets_every_message_too(tmp_path: Path, apiserver: TestApiServer) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    try:
        async with running(tmp_path, apiserver, sim=sim, s=_s()) as r:
            other = KubeletDra(r.ctx.root)
            assert await other.register(REG_SOCKET) is not None
            async with r.kubelet.watching(DRIVER) as first, other.watching(DRIVER) as second:
                await until(lambda: r.plugin.server.health.streams == 2, "two streams")
                await r.ctx.gpu_state.started.wait()
                sim.inject_xid(0, 79)
                for kubelet in (r.kubelet, other):
                    await until(lambda k=kubelet: k.health_of(DRIVER, POOL, "gpu-0") == "Unhealthy", "both told", 3.0)
                assert (
                    _health(first.messages[-1])
                    == _health(second.messages[-1])
                    == {
                        "gpu-0": "Unhealthy",
                        "gpu-1": "Healthy",
                    }
                )
    finally:
        await sim.close()


async def test_a_lost_gpu_is_unhealthy_and_one_nvml_cannot_read_is_unknown_in_the_pods_status(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0, call_timeout_s=0.2, degraded_backoff_s=0.1)
    request = SampleRequest(frozenset({Reading.GPU_TEMP_C}))
    try:
        async with running(tmp_path, apiserver, sim=sim, s=_s()) as r, r.kubelet.watching(DRIVER) as watch:
            uid = claim(apiserver, "c0", ["gpu-0"])
            prepared = (await r.kubelet.prepare(DRIVER, [(uid, "default", "c0")]))[uid]
            await until(lambda: len(watch.messages) >= 1, "the first message")
            status = r.kubelet.resources_status(DRIVER, "gpu", prepared.devices)
            cdi_id = f"k8s.gpu.nvidia.com/claim={uid}-gpu-0"
            assert status == {"name": "claim:gpu", "resources": [{"resourceID": cdi_id, "health": "Healthy"}]}
            sim.lose_gpu(0)
            sim.hang_calls(1, 3.0)
            await r.ctx.gpu_state.sample(request)  # the sweep that sees both
            await until(lambda: r.kubelet.health_of(DRIVER, POOL, "gpu-1") == "Unknown", "gpu-1 Unknown")
            assert r.kubelet.health_of(DRIVER, POOL, "gpu-0") == "Unhealthy"
            assert r.kubelet.resources_status(DRIVER, "gpu", prepared.devices)["resources"][0]["health"] == "Unhealthy"
            details = r.plugin.status().details["health"]
            assert details["gpu-0"] == f"Unhealthy: {resource_health.LOST}"
            assert details["gpu-1"].startswith("Unknown: ") and "NVML" in details["gpu-1"]
            sim.hang_calls(1, 0)
    finally:
        await sim.close()


async def test_the_health_follows_the_same_book_as_the_taints() -> None:
    """Pure: lost → Unhealthy on every device of the GPU; an instance's XID → that MIG device only; NVML not
    answering → Unknown, unless an XID also fails the GPU; back to Healthy after the window."""
    inv = await inventory(2, mig_layout="1g.10gb*7")
    planned = devices.plan(inv)
    mig = next(d for d in planned if d.kind == "mig" and d.gpu_index == 1)
    book = HealthBook(window_s=10.0, ignored=(), hold_base_s=0.0)
    book.xid(XidEvent(1, "GPU-1", 48, 0.0, gpu_instance_id=mig.gpu_instance_id), now=0.0)
    book.states({0: GpuHealthState.LOST})
    out = resource_health.report(planned, book.evaluate([0, 1], 1.0), pool=POOL, now=1234)
    by = {d.device: d for d in out}
    assert [d.device for d in out] == [d.name for d in planned] and all(d.last_updated == 1234 for d in out)
    assert {n for n, d in by.items() if d.health is Health.UNHEALTHY} == {
        d.name for d in planned if d.gpu_index == 0
    } | {mig.name}
    assert "48" in by[mig.name].reason
    book.states({0: GpuHealthState.DEGRADED})

    def on_gpu0(now: float) -> set[Health]:
        out = resource_health.report(planned, book.evaluate([0, 1], now), pool=POOL, now=int(now))
        names = {d.name for d in planned if d.gpu_index == 0}
        return {d.health for d in out if d.device in names}

    assert on_gpu0(2.0) == {Health.UNKNOWN}
    book.xid(XidEvent(0, "GPU-0", 79, 2.0), now=2.0)
    assert on_gpu0(3.0) == {Health.UNHEALTHY}
    book.states({})
    back = resource_health.report(planned, book.evaluate([0, 1], 30.0), pool=POOL, now=30)
    assert {d.health for d in back} == {Health.HEALTHY}


def test_a_newer_time_alone_is_no_change_for_the_feed() -> None:
    feed = HealthFeed()
    first = resource_health.report((), HealthBook(1.0, (), 0.0).evaluate([], 0.0), pool=POOL, now=1)
    assert feed.update(first) is False  # nothing listed before, nothing now
    assert feed.update((DeviceHealth(POOL, "gpu-0", Health.HEALTHY, 1),)) is True
    assert feed.update((DeviceHealth(POOL, "gpu-0", Health.HEALTHY, 2),)) is False
    assert feed.update((DeviceHealth(POOL, "gpu-0", Health.UNKNOWN, 2),)) is True


@pytest.mark.parametrize("value", ["0.5", "30", "45.0"])
def test_a_resend_period_outside_1_to_30_s_is_refused_naming_the_key(tmp_path: Path, value: str) -> None:
    path = tmp_path / "nodeagent.toml"
    path.write_text(f"version = 1\n[dra]\nhealth_resend_s = {value}\n")
    with pytest.raises(ConfigError, match=r"dra\.health_resend_s: .* must be"):
        load(file=path)


class _NoClaims:
    async def prepare(self, claims: tuple[ClaimRef, ...]) -> dict[str, PrepareResult]:
        return {}

    async def unprepare(self, claims: tuple[ClaimRef, ...]) -> dict[str, str]:
        return {}


async def test_a_stream_on_a_connection_kept_past_the_stop_ends_at_once(tmp_path: Path) -> None:
    """Closing a grpclib server leaves its connections open: the kubelet's next stream on one (its 5 s retry,
    before it drops the plugin) must not be served from the stopped plugin's health."""
    root = Root(tmp_path)
    plugin_dir = "/var/lib/kubelet/plugins/gpu.nvidia.com"
    root.resolve(plugin_dir).mkdir(parents=True)
    feed = HealthFeed()
    feed.update((DeviceHealth(POOL, "gpu-0", Health.HEALTHY, 1),))
    server = DraPluginServer(root, plugin_dir, _NoClaims(), feed)
    await server.serve()
    kubelet = KubeletDra(root)
    try:
        with kubelet._channel(f"{plugin_dir}/dra.sock") as channel:
            stub = grpc_health.DRAResourceHealthStub(channel)
            async with stub.NodeWatchResources.open() as stream:
                await stream.send_message(pb_health.NodeWatchResourcesRequest(), end=True)
                assert len((await stream.recv_message()).devices) == 1
                await server.stop()
                assert await stream.recv_message() is None  # ended cleanly
            async with stub.NodeWatchResources.open() as stream:  # the same connection, after the stop
                await stream.send_message(pb_health.NodeWatchResourcesRequest(), end=True)
                assert await asyncio.wait_for(stream.recv_message(), 2.0) is None
    finally:
        await server.stop()
