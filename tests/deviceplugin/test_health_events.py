"""A device turning Unhealthy or Healthy again is one Event about the Node (through the Node gateway), naming
the GPU (index, UUID), the resource and device IDs the kubelet sees, and the reason; a flapping GPU gives no
storm (the hold keeps it unhealthy, so it is one Event when it goes and one when it is back)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nodeagent.deviceplugin import resources
from nodeagent.deviceplugin.health import HEALTHY_REASON, UNHEALTHY_REASON, HealthBook, HealthChange, changes
from nodeagent.model.gpu import GpuHealthState, XidEvent
from nodeagent.testing.apiserver import TestApiServer
from tests.deviceplugin.support import inventory, running, until
from tests.labels.test_labels_subsystem import kube_client

GPU = "nvidia.com/gpu"


def _events(server: TestApiServer) -> list[dict[str, Any]]:
    return [o for (plural, _, _), o in server.store.objects.items() if plural == "events"]


def _ours(server: TestApiServer, reason: str) -> list[dict[str, Any]]:
    return [e for e in _events(server) if e.get("reason") == reason]


async def test_changes_name_the_gpu_its_devices_and_the_reason() -> None:
    inv = await inventory(2)
    uuid = inv.gpus[1].uuid
    sharing = resources.TimeSlicing((resources.SharedResource(2),))
    sick = resources.plan(inv, strategy="none", sharing=sharing, unhealthy={1: "XID 79 GPU has fallen off the bus"})
    uuids = {g.index: g.uuid for g in inv.gpus}
    (went,) = changes({}, {(1, None): "XID 79 GPU has fallen off the bus"}, uuids=uuids, advertised=sick)
    assert went == HealthChange(
        "Warning",
        UNHEALTHY_REASON,
        f"GPU 1 ({uuid}) [{GPU} {uuid}::0, {uuid}::1] listed Unhealthy to the kubelet: "
        "XID 79 GPU has fallen off the bus",
    )
    healthy = resources.plan(inv, strategy="none", sharing=sharing)
    (back,) = changes({(1, None): "XID 79 GPU has fallen off the bus"}, {}, uuids=uuids, advertised=healthy)
    assert back.kind == "Normal" and back.reason == HEALTHY_REASON
    assert back.message.startswith(f"GPU 1 ({uuid}) [{GPU} {uuid}::0") and "(was: XID 79" in back.message
    assert changes({(1, None): "XID 79"}, {(1, None): "GPU lost"}, uuids=uuids, advertised=healthy) == []


async def test_a_mig_device_change_names_that_device_only() -> None:
    inv = await inventory(1, mig_layout="1g.10gb*7")
    device = inv.gpus[0].mig_devices[2]
    gi = device.gpu_instance_id
    plan = resources.plan(inv, strategy="mixed", unhealthy_instances={(0, gi): "XID 48"})
    (went,) = changes({}, {(0, gi): "XID 48"}, uuids={0: inv.gpus[0].uuid}, advertised=plan)
    assert f"GPU 0 ({inv.gpus[0].uuid}) GPU instance {gi} [nvidia.com/mig-1g.10gb {device.uuid}]" in went.message


def test_a_flapping_gpu_gives_one_event_each_way() -> None:
    """XID 79 every 40 s for 10 minutes (window 60 s, hold 30 s doubling): evaluated every second, the verdicts
    change twice; the Events are those two, not one per XID or per evaluation."""
    book = HealthBook(window_s=60.0, ignored=(), hold_base_s=30.0)
    advertised = resources.Advertised(())
    before: dict[tuple[int, int | None], str] = {}
    got: list[HealthChange] = []
    for now in range(0, 1200):
        if now < 600 and now % 40 == 0:
            book.xid(XidEvent(0, "GPU-0", 79, 0.0), now=float(now))
        if now == 300:
            book.states({0: GpuHealthState.LOST})  # another reason while unhealthy: no Event
        if now == 301:
            book.states({0: GpuHealthState.OK})
        after: dict[tuple[int, int | None], str] = {
            (g, None): w for g, w in book.evaluate([0], float(now)).gpus.items()
        }
        got += changes(before, after, uuids={0: "GPU-0"}, advertised=advertised)
        before = after
    assert [c.reason for c in got] == [UNHEALTHY_REASON, HEALTHY_REASON]


async def test_an_xid_records_one_event_and_recovery_another(tmp_path: Path, apiserver: TestApiServer) -> None:
    async with running(tmp_path, kube=kube_client(apiserver)) as r:
        assert r.sim is not None
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 2)
        await r.ctx.gpu_state.started.wait()
        uuid = (await r.ctx.gpu_state.current()).gpus[1].uuid
        for _ in range(3):  # a burst of the same fault: one change
            r.sim.inject_xid(1, 79)
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 1)
        await until(lambda: bool(_ours(apiserver, UNHEALTHY_REASON)), "the Unhealthy Event")
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 2, timeout_s=5)  # xid_window_s = 1
        await until(lambda: bool(_ours(apiserver, HEALTHY_REASON)), "the Healthy Event")
        (went,) = _ours(apiserver, UNHEALTHY_REASON)
        (back,) = _ours(apiserver, HEALTHY_REASON)
    assert went["type"] == "Warning" and went.get("count", 1) == 1
    assert went["involvedObject"]["kind"] == "Node" and went["involvedObject"]["name"] == "node-a"
    assert f"GPU 1 ({uuid}) [{GPU} {uuid}] listed Unhealthy" in went["message"] and "XID 79" in went["message"]
    assert back["type"] == "Normal" and f"GPU 1 ({uuid})" in back["message"] and "Healthy again" in back["message"]
    assert not [e for e in _events(apiserver) if "GPU 0" in e.get("message", "")]
