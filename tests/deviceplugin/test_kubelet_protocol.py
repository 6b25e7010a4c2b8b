"""The plugin on a stand-in kubelet that enforces the protocol: registration, ListAndWatch, Allocate,
GetPreferredAllocation, health updates, kubelet restarts and a kubelet that comes later."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from nodeagent import events
from nodeagent.backends.deviceplugin_server import ContainerAllocation, Device, DevicePluginServer, register
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.deviceplugin.subsystem import OPTIONS
from nodeagent.errors import BackendUnavailable
from nodeagent.subsystem import Phase
from nodeagent.testing.kubelet_plugins import KubeletDevicePlugins
from tests.deviceplugin.support import PLUGIN_DIR, inventory, running, settings, until, write_cdi_spec

GPU = "nvidia.com/gpu"


class _NoAllocation:
    def preferred(self, available: tuple[str, ...], must_include: tuple[str, ...], size: int) -> tuple[str, ...]:
        return available[:size]

    async def allocate(self, device_ids: tuple[str, ...]) -> ContainerAllocation:
        return ContainerAllocation()


async def test_registers_nvidia_gpu_and_lists_every_gpu_by_uuid(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 2)
        assert r.kubelet.registrations == [("v1beta1", GPU, "nodeagent-gpu.sock")]
        inv = await r.ctx.gpu_state.current()
        devices = r.kubelet.plugins[GPU].devices
        assert [d[0] for d in devices] == [g.uuid for g in inv.gpus]
        assert [d[2] for d in devices] == [(0,), (1,)]  # NUMA node per GPU from the inventory
        assert r.kubelet.plugins[GPU].options.get_preferred_allocation_available
        status = r.plugin.status()
        assert status.phase == Phase.RUNNING, status.reason
        assert status.details["resources"][GPU]["registered"]


async def test_allocate_answers_with_the_cdi_spec_names(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        inv = await r.ctx.gpu_state.current()
        write_cdi_spec(r.ctx.root, inv)
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 2)
        reply = await r.kubelet.allocate(GPU, [inv.gpus[1].uuid], [inv.gpus[0].uuid])
        names = [[c.name for c in resp.cdi_devices] for resp in reply.container_responses]
        assert names == [[f"nvidia.com/gpu={inv.gpus[1].uuid}"], [f"nvidia.com/gpu={inv.gpus[0].uuid}"]]
        assert not reply.container_responses[0].envs


async def test_allocate_refuses_an_unknown_device_and_one_the_spec_does_not_name(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        inv = await r.ctx.gpu_state.current()
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 2)
        with pytest.raises(GRPCError) as no_spec:
            await r.kubelet.allocate(GPU, [inv.gpus[0].uuid])
        assert no_spec.value.status == Status.INVALID_ARGUMENT
        assert "no CDI spec at /var/run/cdi/nvidia.yaml" in str(no_spec.value.message)
        write_cdi_spec(r.ctx.root, inv)
        with pytest.raises(GRPCError) as unknown:
            await r.kubelet.allocate(GPU, [inv.gpus[0].uuid, "GPU-not-here"])
        assert unknown.value.status == Status.INVALID_ARGUMENT
        assert unknown.value.message == "nvidia.com/gpu: unknown device 'GPU-not-here'"


async def test_envvar_and_annotations_by_setting(tmp_path: Path) -> None:
    s = settings(device_list_strategy=["envvar", "cdi-annotations"], device_id_strategy="index")
    async with running(tmp_path, s) as r:
        inv = await r.ctx.gpu_state.current()
        write_cdi_spec(r.ctx.root, inv)
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 2)
        assert [d[0] for d in r.kubelet.plugins[GPU].devices] == ["0", "1"]
        (resp,) = (await r.kubelet.allocate(GPU, ["1"])).container_responses
        assert dict(resp.envs) == {"NVIDIA_VISIBLE_DEVICES": "1"}
        assert dict(resp.annotations) == {
            "cdi.k8s.io/nodeagent-device-plugin_gpu": f"nvidia.com/gpu={inv.gpus[1].uuid}"
        }
        assert not resp.cdi_devices


async def test_preferred_allocation_keeps_to_one_numa_node(tmp_path: Path) -> None:
    async with running(tmp_path, inv=await inventory(8)) as r:
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 8)
        ids = [d[0] for d in r.kubelet.plugins[GPU].devices]
        got = await r.kubelet.preferred(GPU, ids, [ids[5]], 3)
        assert got[0] == ids[5] and set(got) <= set(ids[4:])  # GPUs 4-7 share NUMA node 1


async def test_an_xid_turns_the_device_unhealthy_within_100_ms_and_it_recovers(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        assert r.sim is not None
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 2)
        await r.ctx.gpu_state.started.wait()
        plugin = r.kubelet.plugins[GPU]
        before = len(plugin.updates)
        injected = time.perf_counter()
        r.sim.inject_xid(1, 79)
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 1)
        arrived = plugin.updates[before].at
        assert arrived - injected < 0.1, f"{(arrived - injected) * 1000:.1f} ms"
        assert plugin.devices[1][1] == "Unhealthy"
        assert "XID 79" in r.plugin.unhealthy[1]
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 2, timeout_s=5)  # xid_window_s = 1


async def test_a_kubelet_restart_is_served_and_registered_again_within_a_second(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 2)
        restarted = time.perf_counter()
        await r.kubelet.restart()
        assert not (r.kubelet.directory / "nodeagent-gpu.sock").exists()  # the kubelet deleted it
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 2, timeout_s=3)
        assert time.perf_counter() - restarted < 1.0
        assert len(r.kubelet.registrations) == 2
        assert r.plugin.registrations == 2


async def test_a_plugin_the_kubelet_drops_registers_again(tmp_path: Path) -> None:
    """A previous endpoint of the resource whose stream ends after the agent registered (a quick agent
    restart) makes the kubelet disconnect the agent's client: only the closed stream says it."""
    kubelet = KubeletDevicePlugins(Root(tmp_path).resolve(PLUGIN_DIR))
    await kubelet.start()
    previous = DevicePluginServer(Root(tmp_path), PLUGIN_DIR, "previous-gpu.sock", _NoAllocation(), options=OPTIONS)
    await previous.start()
    previous.update((Device("previous-0", True),))
    await register(Root(tmp_path), PLUGIN_DIR, resource_name=GPU, endpoint="previous-gpu.sock", options=OPTIONS)
    await kubelet.wait_for(lambda: kubelet.allocatable(GPU) == 1)
    async with running(tmp_path, kubelet=kubelet) as r:
        await r.kubelet.wait_for(lambda: r.plugin.registrations == 1 and r.kubelet.allocatable(GPU) == 2)
        await previous.stop()  # its stream ends: the kubelet drops the agent's client
        await r.kubelet.wait_for(lambda: len(r.kubelet.dropped) == 1)
        await r.kubelet.wait_for(lambda: r.plugin.registrations == 2 and r.kubelet.allocatable(GPU) == 2)
        assert [p.endpoint for p in r.kubelet.dropped] == ["nodeagent-gpu.sock"]


async def test_waits_for_a_kubelet_that_comes_later(tmp_path: Path) -> None:
    async with running(tmp_path, kubelet_first=False) as r:
        await until(lambda: "waiting for the kubelet" in r.plugin.status().reason, "the plugin waiting")
        assert r.plugin.status().ready
        await r.kubelet.start()
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 2, timeout_s=5)


async def test_a_mig_change_advertises_the_new_resources_and_drops_the_old_to_zero(tmp_path: Path) -> None:
    s = settings()
    s = type(s).with_sections(s, {"labels": type(s.labels)(mig_strategy="mixed")})
    async with running(tmp_path, s, inv=await inventory(2)) as r:
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 2)
        r.ctx.bus.publish(events.MIG_CHANGED, await inventory(2, mig_layout="1g.10gb*7"))
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable("nvidia.com/mig-1g.10gb") == 14)
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 0)
        assert "nvidia.com/gpu" in r.kubelet.plugins  # still registered, with an empty list


@pytest.mark.parametrize(
    ("resource", "why"),
    [("gpu", "must be <domain>/<name>"), ("kubernetes.io/gpu", "reserved"), ("nvidia.com/-gpu", "qualified name")],
)
async def test_the_stand_in_refuses_what_the_kubelet_refuses(tmp_path: Path, resource: str, why: str) -> None:
    async with running(tmp_path) as r:
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 2)
        with pytest.raises(BackendUnavailable, match=why):
            await register(r.ctx.root, PLUGIN_DIR, resource_name=resource, endpoint="nodeagent-gpu.sock")
        with pytest.raises(BackendUnavailable, match="no plugin socket"):
            await register(r.ctx.root, PLUGIN_DIR, resource_name="nvidia.com/x", endpoint="missing.sock")


async def test_a_slow_register_never_delays_a_health_update(tmp_path: Path) -> None:
    s = settings()
    s = type(s).with_sections(s, {"labels": type(s.labels)(mig_strategy="mixed")})
    async with running(tmp_path, s) as r:
        assert r.sim is not None
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 2)
        await r.ctx.gpu_state.started.wait()
        inv = await r.ctx.gpu_state.current()
        mig = await inventory(2, mig_layout="1g.10gb*7")
        r.kubelet.hold_register = asyncio.Event()  # the next Register (the new MIG resource) hangs
        r.ctx.bus.publish(events.MIG_CHANGED, replace(inv, gpus=(mig.gpus[0], inv.gpus[1])))
        await r.kubelet.wait_for(lambda: len(r.kubelet.registrations) == 2)
        assert r.kubelet.registrations[1][1] == "nvidia.com/mig-1g.10gb"
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 1)  # GPU 0 went MIG
        injected = time.perf_counter()
        r.sim.inject_xid(1, 79)
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 0)
        assert time.perf_counter() - injected < 0.1
        r.kubelet.hold_register.set()
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable("nvidia.com/mig-1g.10gb") == 7)


async def test_an_xid_on_a_gpu_instance_lowers_allocatable_by_that_mig_device(tmp_path: Path) -> None:
    s = settings()
    s = type(s).with_sections(s, {"labels": type(s.labels)(mig_strategy="mixed")})
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0, mig_layout="1g.10gb*7")
    mig = "nvidia.com/mig-1g.10gb"
    async with running(tmp_path, s, sim=sim) as r:
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(mig) == 14)
        await r.ctx.gpu_state.started.wait()
        inv = await r.ctx.gpu_state.current()
        device = inv.gpus[1].mig_devices[4]
        sim.inject_xid(1, 48, gpu_instance_id=device.gpu_instance_id)
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(mig) == 13)
        assert device.uuid not in r.kubelet.plugins[mig].healthy()
