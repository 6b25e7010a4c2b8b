"""What the DRA plugin publishes (pure): NVIDIA's device names, attributes and capacities for whole GPUs and
MIG devices; the ResourceSlices' split and generation; the setting that keeps DRA and the device plugin apart."""

from __future__ import annotations

from typing import Any

import pytest

from nodeagent.dra import devices
from nodeagent.errors import GpuServedTwice
from nodeagent.kube import resourceslices
from nodeagent.settings import loading
from tests.deviceplugin.support import inventory


def test_versions_are_semver() -> None:
    assert devices.semver("550.54") == "550.54.0"
    assert devices.semver("535.104.05") == "535.104.5"
    assert devices.semver("r550") == ""
    assert devices.cuda_version(12040) == "12.4.0"
    assert devices.pci_address("00000000:18:00.0") == "0000:18:00.0"


async def test_mig_devices_have_nvidias_names_profile_parent_and_capacities() -> None:
    inv = await inventory(1, mig_layout="3g.40gb*2")
    gpu = inv.gpus[0]
    published = devices.plan(inv, {gpu.pci_bus_id: "pci0000:17"})
    assert [d.name for d in published] == [
        f"gpu-{gpu.minor_number}-mig-3g40gb-9-0",
        f"gpu-{gpu.minor_number}-mig-3g40gb-9-4",
    ]
    first = published[0]
    assert first.kind == "mig" and first.uuid == gpu.mig_devices[0].uuid
    assert first.attributes["type"] == {"string": "mig"}
    assert first.attributes["profile"] == {"string": "3g.40gb"}
    assert first.attributes["parentUUID"] == {"string": gpu.uuid}
    assert first.attributes["resource.kubernetes.io/pcieRoot"] == {"string": "pci0000:17"}
    assert first.capacity["multiprocessors"] == 60
    assert first.capacity["memory"] == gpu.mig_devices[0].memory_total_mib * 1024 * 1024
    assert devices.mig_profile_part("1g.10gb+me") == "1g10gb-me"


def _device(i: int, **extra: Any) -> dict[str, Any]:
    return {"name": f"gpu-{i}", "attributes": {}, "capacity": {}, **extra}


def _stored(writes: resourceslices.SliceWrites) -> list[dict[str, Any]]:
    return [dict(b, metadata={**b["metadata"], "resourceVersion": "7"}) for b in writes.upserts]


def test_slices_hold_at_most_128_devices_64_with_taints_and_bump_the_generation_on_change() -> None:
    many = [_device(i) for i in range(300)]
    first = resourceslices.plan([], node="n", node_uid="u", driver="gpu.nvidia.com", devices=many)
    assert [len(b["spec"]["devices"]) for b in first.upserts] == [128, 128, 44]
    assert {b["spec"]["pool"]["resourceSliceCount"] for b in first.upserts} == {3}
    assert first.generation == 0
    assert first.upserts[0]["metadata"]["ownerReferences"][0]["uid"] == "u"
    stored = _stored(first)
    assert resourceslices.plan(stored, node="n", node_uid="u", driver="gpu.nvidia.com", devices=many).empty
    fewer = resourceslices.plan(stored, node="n", node_uid="u", driver="gpu.nvidia.com", devices=many[:100])
    assert fewer.generation == 1 and fewer.deletes == ("n-gpu.nvidia.com-1", "n-gpu.nvidia.com-2")
    assert fewer.upserts[0]["metadata"]["resourceVersion"] == "7"
    tainted = [_device(i, taints=[{"key": "k", "effect": "NoSchedule"}]) for i in range(65)]
    split = resourceslices.plan([], node="n", node_uid="", driver="d", devices=tainted)
    assert [len(b["spec"]["devices"]) for b in split.upserts] == [64, 1]


def test_dra_and_the_device_plugin_both_on_is_refused_by_name() -> None:
    with pytest.raises(GpuServedTwice) as err:
        loading.load(env={"NODEAGENT_DRA__ENABLED": "true"})
    assert str(err.value).startswith("dra.enabled: the device plugin (deviceplugin.enabled) and DRA")
    only_dra = loading.load(env={"NODEAGENT_DRA__ENABLED": "true", "NODEAGENT_DEVICEPLUGIN__ENABLED": "false"})
    assert only_dra.dra.enabled and not only_dra.deviceplugin.enabled


def test_dra_gpus_split_the_gpus_between_dra_and_the_device_plugin() -> None:
    both = loading.load(env={"NODEAGENT_DRA__ENABLED": "true", "NODEAGENT_DRA__GPUS": "1"})
    assert both.dra.gpus == ["1"] and both.deviceplugin.enabled


async def test_an_inventory_splits_by_index_or_uuid() -> None:
    inv = await inventory(3)
    named, rest = inv.split(["0", inv.gpus[2].uuid])
    assert [g.index for g in named.gpus] == [0, 2]
    assert [g.index for g in rest.gpus] == [1]
