"""The NVML backend's link topology (PCIe common ancestors, NVLinks, NVSwitch) against the fake pynvml."""

from __future__ import annotations

import pynvml

from nodeagent.backends.gpu.nvml.backend import NvmlBackend
from nodeagent.model.gpu import GpuHealthState, Inventory
from nodeagent.model.topology import Level, PairLink
from tests.backends.fake_nvml import FakeDevice, FakeNvml, h100_node

SWITCH = pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH
GPU = pynvml.NVML_NVLINK_DEVICE_TYPE_GPU


async def inventory_of(devices: list[FakeDevice], *, times: int = 1) -> tuple[Inventory, FakeNvml]:
    fake = FakeNvml(devices)
    backend = NvmlBackend(nvml=fake, call_timeout_s=0.5, degraded_backoff_s=60.0)
    await backend.open()
    try:
        for _ in range(times):
            inv = await backend.inventory()
    finally:
        await backend.close()
    return inv, fake


def hgx(count: int) -> list[FakeDevice]:
    """An HGX board: 18 NVLinks per GPU, all to NVSwitches; two sockets."""
    devices = h100_node(count)
    for d in devices:
        d.nvlinks = [(SWITCH, f"00000000:{0xA0 + n % 4:02X}:00.0") for n in range(18)]
        for other in devices:
            same_socket = d.index * 2 // count == other.index * 2 // count
            d.levels[other.index] = pynvml.NVML_TOPOLOGY_NODE if same_socket else pynvml.NVML_TOPOLOGY_SYSTEM
    return devices


async def test_an_hgx_board_counts_every_pair_through_the_nvswitches() -> None:
    inv, _ = await inventory_of(hgx(4))
    t = inv.topology
    assert t.link(0, 1) == PairLink(Level.NODE, 18)
    assert t.link(3, 0) == PairLink(Level.SYSTEM, 18)
    assert len(t.pairs) == 6


async def test_direct_nvlinks_are_counted_per_peer_and_a_down_link_is_not() -> None:
    devices = h100_node(3)  # 0 and 1 bridged by 4 links (one down), 2 on PCIe only
    devices[0].nvlinks = [(GPU, devices[1].bus_id)] * 4
    devices[0].nvlink_down = {3}
    devices[1].nvlinks = [(GPU, devices[0].bus_id.lower())] * 4
    devices[1].nvlink_down = {3}
    devices[2].levels = {0: pynvml.NVML_TOPOLOGY_HOSTBRIDGE, 1: pynvml.NVML_TOPOLOGY_SINGLE}
    inv, _ = await inventory_of(devices)
    assert inv.topology.link(0, 1) == PairLink(Level.SYSTEM, 3)
    assert inv.topology.link(0, 2) == PairLink(Level.HOSTBRIDGE, 0)
    assert inv.topology.link(1, 2) == PairLink(Level.SINGLE, 0)


async def test_a_pcie_gpu_answering_not_supported_has_levels_and_no_nvlink() -> None:
    inv, fake = await inventory_of(h100_node(2))  # the fake's default: NvLinkState NotSupported
    assert inv.topology.link(0, 1) == PairLink(Level.SYSTEM, 0)
    assert fake.calls_for("nvmlDeviceGetNvLinkState") == 2  # link 0 said NotSupported: no further link asked
    assert all(g.health == GpuHealthState.OK for g in inv.gpus)


async def test_links_are_read_once() -> None:
    _, fake = await inventory_of(hgx(2), times=3)
    assert fake.calls_for("nvmlDeviceGetTopologyCommonAncestor") == 2  # GPU 1 asks about GPU 0, once (2 entries)
    assert fake.calls_for("nvmlDeviceGetNvLinkRemoteDeviceType") == 36  # 18 links x 2 GPUs, once


async def test_a_gpu_lost_mid_read_is_named_and_the_other_pairs_stay() -> None:
    devices = hgx(3)
    devices[1].errors["nvmlDeviceGetNvLinkRemoteDeviceType"] = pynvml.NVML_ERROR_GPU_IS_LOST
    inv, _ = await inventory_of(devices)
    lost = inv.gpu(1)
    assert lost.health == GpuHealthState.LOST
    assert "nvmlDeviceGetNvLinkRemoteDeviceType: GPU is lost" in lost.health_reason
    assert inv.gpu(0).health == inv.gpu(2).health == GpuHealthState.OK
    assert inv.topology.link(0, 2) == PairLink(Level.SYSTEM, 18)
    assert inv.topology.link(0, 1) == PairLink()  # nothing known of the lost GPU's links


async def test_a_lost_peer_is_not_blamed_on_the_gpu_asking() -> None:
    devices = hgx(3)
    devices[0].errors["nvmlDeviceGetTopologyCommonAncestor"] = pynvml.NVML_ERROR_GPU_IS_LOST
    inv, _ = await inventory_of(devices)
    assert [g.health for g in inv.gpus] == [GpuHealthState.OK] * 3
    assert inv.topology.link(1, 2) == PairLink(Level.SYSTEM, 18)
    assert inv.topology.link(0, 1) == PairLink(None, 18)  # the level could not be read: unknown, links known
