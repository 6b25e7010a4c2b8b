"""GPU health as device taints on the node's ResourceSlice: the health book's verdicts (the device plugin's
table and hold) → ``gpu.nvidia.com/xid`` / ``gpu.nvidia.com/gpu-lost`` NoSchedule, one slice write per change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.dra import devices, health
from nodeagent.gpuhealth.book import HealthBook
from nodeagent.model.gpu import GpuHealthState, Reading, SampleRequest, XidEvent
from nodeagent.settings import replace
from nodeagent.testing.apiserver import TestApiServer
from tests.deviceplugin.support import inventory
from tests.dra.support import running, settings, until


def _devices(server: TestApiServer) -> dict[str, dict[str, Any]]:
    slices = [o for (plural, _, _), o in sorted(server.store.objects.items()) if plural == "resourceslices"]
    return {d["name"]: d for sl in slices for d in sl["spec"]["devices"]}


def _taints(server: TestApiServer, name: str) -> list[tuple[str, str, str]]:
    return [(t["key"], t["value"], t["effect"]) for t in _devices(server).get(name, {}).get("taints", [])]


async def test_an_xid_taints_its_gpu_with_one_slice_write_and_recovery_removes_it(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    # a window long enough that a loaded machine still checks the taint before it goes
    s = replace(settings(), "gpuhealth", xid_window_s=3.0, min_publish_interval_s=0.0)
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    try:
        async with running(tmp_path, apiserver, sim=sim, s=s) as r:
            # the write counted too (the API server holds the slice a moment before the plugin counts its write)
            await until(
                lambda: set(_devices(apiserver)) == {"gpu-0", "gpu-1"} and r.plugin.slice_writes >= 1,
                "the ResourceSlice",
            )
            await r.ctx.gpu_state.started.wait()
            writes = r.plugin.slice_writes
            for _ in range(3):  # a burst of the same fault: one change, one write
                sim.inject_xid(1, 79)
            await until(lambda: bool(_taints(apiserver, "gpu-1")), "the XID taint")
            assert _taints(apiserver, "gpu-1") == [("gpu.nvidia.com/xid", "79", "NoSchedule")]
            assert _taints(apiserver, "gpu-0") == []
            assert r.plugin.slice_writes == writes + 1
            added = _devices(apiserver)["gpu-1"]["taints"][0]["timeAdded"]
            assert added.endswith("Z") and "T" in added
            assert r.plugin.status().details["taints"] == {"gpu-1": ["gpu.nvidia.com/xid=79:NoSchedule"]}
            await until(lambda: not _taints(apiserver, "gpu-1"), "the taint gone after the XID window", timeout_s=10)
            assert r.plugin.slice_writes == writes + 2
            sim.lose_gpu(0)
            await r.ctx.gpu_state.sample(SampleRequest(frozenset({Reading.GPU_TEMP_C})))  # the sweep that sees it
            lost = [("gpu.nvidia.com/gpu-lost", "true", "NoSchedule")]
            await until(lambda: _taints(apiserver, "gpu-0") == lost, "the GPU-lost taint", timeout_s=5)
    finally:
        await sim.close()


async def test_an_xid_naming_a_gpu_instance_taints_that_mig_device_only_and_a_lost_gpu_every_device_on_it() -> None:
    inv = await inventory(2, mig_layout="1g.10gb*7")
    planned = devices.plan(inv)
    migs = [d for d in planned if d.kind == "mig" and d.gpu_index == 0]
    assert len(migs) >= 2 and all(d.gpu_instance_id is not None for d in migs)
    book = HealthBook(window_s=10.0, ignored=(), hold_base_s=0.0)
    gi = migs[0].gpu_instance_id
    book.xid(XidEvent(0, "GPU-0", 48, 0.0, gpu_instance_id=gi), now=0.0)
    added: dict[tuple[str, str, str], str] = {}
    last: dict[tuple[int, int | None], str] = {}
    out = health.apply(planned, book.evaluate([0, 1], 1.0), now="T1", added=added, last=last)
    tainted = {d.name: d.taints for d in out if d.taints}
    assert tainted == {
        migs[0].name: ({"key": health.XID_TAINT, "value": "48", "effect": "NoSchedule", "timeAdded": "T1"},)
    }
    again = health.apply(planned, book.evaluate([0, 1], 2.0), now="T2", added=added, last=last)
    assert [d.taints for d in again] == [d.taints for d in out]  # unchanged: the same timeAdded, no write
    book.states({0: GpuHealthState.LOST})
    lost = health.apply(planned, book.evaluate([0, 1], 3.0), now="T3", added=added, last=last)
    assert {d.name for d in lost if d.taints} == {d.name for d in planned if d.gpu_index == 0}
    assert all(d.taints[0]["key"] == health.LOST_TAINT for d in lost if d.taints)
    book.states({0: GpuHealthState.OK})
    back = health.apply(planned, book.evaluate([0, 1], 20.0), now="T4", added=added, last=last)
    assert not any(d.taints for d in back) and not added and not last
