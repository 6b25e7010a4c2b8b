"""What is advertised, per MIG strategy, ID strategy and time-slicing (pure planning)."""

from __future__ import annotations

import dataclasses

import pytest

from nodeagent.deviceplugin.resources import (
    Advertised,
    SharedResource,
    TimeSlicing,
    mig_resource,
    plan,
    socket_name,
)
from nodeagent.model.gpu import Inventory
from tests.deviceplugin.support import inventory


def counts(adv: Advertised) -> dict[str, int]:
    return {r.name: len(r.devices) for r in adv.resources}


def without_mig(inv: Inventory, *indexes: int) -> Inventory:
    gpus = tuple(
        dataclasses.replace(g, mig_enabled=False, mig_devices=()) if g.index in indexes else g for g in inv.gpus
    )
    return dataclasses.replace(inv, gpus=gpus)


def test_nvidias_names() -> None:
    assert mig_resource("1g.10gb") == "nvidia.com/mig-1g.10gb"
    assert mig_resource("1g.10gb+me") == "nvidia.com/mig-1g.10gb.me"
    assert socket_name("nvidia.com/mig-1g.10gb") == "nodeagent-mig-1g.10gb.sock"
    assert socket_name("nvidia.com/gpu") == "nodeagent-gpu.sock"


async def test_none_advertises_whole_gpus_by_uuid_and_by_index() -> None:
    inv = await inventory(8)
    by_uuid = plan(inv, strategy="none")
    assert counts(by_uuid) == {"nvidia.com/gpu": 8}
    assert [d.id for d in by_uuid.resources[0].devices] == [g.uuid for g in inv.gpus]
    by_index = plan(inv, strategy="none", id_strategy="index", numa={g.index: g.numa_node for g in inv.gpus})
    assert [d.id for d in by_index.resources[0].devices] == [str(i) for i in range(8)]
    assert [d.unit.numa_node for d in by_index.resources[0].devices] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert all(len(d.id) <= 63 for d in by_uuid.resources[0].devices)


async def test_mixed_names_each_profile_and_keeps_whole_gpus() -> None:
    inv = without_mig(await inventory(3, mig_layout="3g.40gb,2g.20gb,1g.10gb+me"), 2)
    adv = plan(inv, strategy="mixed")
    assert counts(adv) == {
        "nvidia.com/gpu": 1,
        "nvidia.com/mig-1g.10gb.me": 2,
        "nvidia.com/mig-2g.20gb": 2,
        "nvidia.com/mig-3g.40gb": 2,
    }
    mig = adv.resource("nvidia.com/mig-3g.40gb")
    assert mig is not None and [d.id for d in mig.devices] == [m.uuid for g in inv.gpus[:2] for m in g.mig_devices[:1]]
    indexed = plan(inv, strategy="mixed", id_strategy="index").resource("nvidia.com/mig-2g.20gb")
    assert indexed is not None and [d.id for d in indexed.devices] == ["0:1", "1:1"]


async def test_mixed_56_mig_devices_on_8_h100s() -> None:
    adv = plan(await inventory(8, mig_layout="1g.10gb*7"), strategy="mixed")
    assert counts(adv) == {"nvidia.com/gpu": 0, "nvidia.com/mig-1g.10gb": 56}


async def test_a_mig_enabled_gpu_without_instances_advertises_nothing() -> None:
    inv = await inventory(2, mig_layout="1g.10gb*7")
    empty = dataclasses.replace(inv, gpus=(dataclasses.replace(inv.gpus[0], mig_devices=()), inv.gpus[1]))
    adv = plan(empty, strategy="mixed")
    assert counts(adv) == {"nvidia.com/gpu": 0, "nvidia.com/mig-1g.10gb": 7}
    assert adv.problems == ("GPU 0 has MIG enabled and no MIG devices: it advertises nothing",)
    none = plan(inv, strategy="none")
    assert counts(none) == {"nvidia.com/gpu": 0}
    assert "GPU 0 has MIG enabled: not advertised with mig strategy none" in none.problems[0]


async def test_single_advertises_mig_devices_as_gpus_or_nothing_when_invalid() -> None:
    adv = plan(await inventory(2, mig_layout="1g.10gb*7"), strategy="single")
    assert counts(adv) == {"nvidia.com/gpu": 14}
    assert plan(await inventory(2), strategy="single").problems == ()
    two_kinds = plan(await inventory(2, mig_layout="3g.40gb,4g.40gb"), strategy="single")
    assert counts(two_kinds) == {"nvidia.com/gpu": 0}
    assert "more than one MIG device type present on node" in two_kinds.problems[0]
    half = plan(without_mig(await inventory(2, mig_layout="1g.10gb*7"), 1), strategy="single")
    assert "devices with MIG enabled and disable detected" in half.problems[0]


async def test_time_slicing_node_wide_per_gpu_and_renamed() -> None:
    inv = await inventory(2)
    node_wide = plan(inv, strategy="none", sharing=TimeSlicing((SharedResource(4),)))
    (gpu,) = node_wide.resources
    assert gpu.shared and len(gpu.devices) == 8
    assert gpu.devices[1].id == f"{inv.gpus[0].uuid}::1" and gpu.devices[1].replica == 1
    per_gpu = plan(
        inv,
        strategy="none",
        id_strategy="index",
        sharing=TimeSlicing((SharedResource(4, devices=("0",)), SharedResource(2, devices=("1",)))),
    )
    assert [d.id for d in per_gpu.resources[0].devices] == ["0::0", "0::1", "0::2", "0::3", "1::0", "1::1"]
    renamed = plan(
        inv, strategy="none", sharing=TimeSlicing((SharedResource(2, devices=("0",)),), rename_by_default=True)
    )
    assert counts(renamed) == {"nvidia.com/gpu": 1, "nvidia.com/gpu.shared": 2}
    explicit = plan(
        inv, strategy="none", sharing=TimeSlicing((SharedResource(3, "nvidia.com/gpu", "example.com/vgpu"),))
    )
    assert counts(explicit) == {"nvidia.com/gpu": 0, "example.com/vgpu": 6}


async def test_unhealthy_gpus_are_listed_unhealthy_with_their_mig_devices() -> None:
    adv = plan(await inventory(2, mig_layout="1g.10gb*7"), strategy="mixed", unhealthy={1: "XID 79"})
    mig = adv.resource("nvidia.com/mig-1g.10gb")
    assert mig is not None
    assert [d.healthy for d in mig.devices] == [True] * 7 + [False] * 7


async def test_an_unhealthy_gpu_instance_is_its_mig_device_only() -> None:
    inv = await inventory(2, mig_layout="1g.10gb*7")
    gi = inv.gpus[0].mig_devices[2].gpu_instance_id
    adv = plan(inv, strategy="mixed", unhealthy_instances={(0, gi): "XID 48"})
    mig = adv.resource("nvidia.com/mig-1g.10gb")
    assert mig is not None
    assert [d.unit.key for d in mig.devices if not d.healthy] == ["0:2"]
    whole = plan(await inventory(2), strategy="none", unhealthy_instances={(1, 3): "XID 48"}).resources[0]
    assert [d.healthy for d in whole.devices] == [True, False]  # an instance id on a whole GPU: the GPU


def test_an_unknown_strategy_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown MIG strategy"):
        plan(Inventory("sim", "", "", 0), strategy="split")
