"""Dynamic MIG publication (pure): a MIG-enabled GPU as one counter set and one device per placement, the
instances in use leaving out what they overlap, the slices split within 1.34's limits (checked by the test API
server's ResourceSlice validation, the apiserver's rules)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nodeagent.dra import devices, partitions
from nodeagent.errors import ConfigError
from nodeagent.kube import resourceslices
from nodeagent.model.gpu import Inventory
from nodeagent.settings import loading
from nodeagent.testing.apiserver.validate_slices import slice_problems
from tests.dra.support import mig_sim


async def mig_inventory(count: int, *instances: tuple[int, str, int]) -> Inventory:
    """``count`` simulated H100s with MIG enabled and the (GPU, profile, start) instances."""
    sim = await mig_sim(count, *instances)
    try:
        return await sim.inventory()
    finally:
        await sim.close()


def _by_name(pub: partitions.Publication) -> dict[str, devices.PublishedDevice]:
    return {d.name: d for d in pub.devices}


def test_a_mig_gpu_is_a_counter_set_and_one_device_per_placement_with_static_mig_attributes() -> None:
    inv = asyncio.run(mig_inventory(1))
    pub = partitions.plan(inv)
    (cs,) = pub.counter_sets
    assert cs.name == "gpu-0-counters"
    assert cs.counters == {**{f"memory-slice-{i}": 1 for i in range(8)}, "compute-slices": 7, "media-extensions": 1}
    # H100: 7x 1g.10gb, 7x 1g.10gb+me, 4x 1g.20gb, 3x 2g.20gb, 2x 3g.40gb, 4g.40gb, 7g.80gb
    assert len(pub.devices) == 25
    assert "gpu-0" not in _by_name(pub)  # no whole GPU in MIG mode: 7g.80gb is its placement
    d = _by_name(pub)["gpu-0-mig-3g40gb-9-4"]
    assert d.placement == ("3g.40gb", 4)
    assert d.consumes == {"gpu-0-counters": {**{f"memory-slice-{i}": 1 for i in range(4, 8)}, "compute-slices": 3}}
    assert _by_name(pub)["gpu-0-mig-1g10gb-me-20-6"].consumes["gpu-0-counters"] == {
        "memory-slice-6": 1,
        "compute-slices": 1,
        "media-extensions": 1,
    }
    api = d.api()
    assert api["consumesCounters"][0]["counterSet"] == "gpu-0-counters"
    assert api["capacity"]["memory"] == {"value": str(40448 * 1024 * 1024)}
    assert api["capacity"]["multiprocessors"] == {"value": "60"}
    # the attributes of a static MIG device of that profile, less the UUID it only gets when created
    static_inv = asyncio.run(mig_inventory(1, (0, "3g.40gb", 4)))
    (static,) = devices.plan(static_inv)
    assert static.name == d.name
    assert set(static.attributes) - set(d.attributes) == {"uuid"}
    assert {k: v for k, v in static.attributes.items() if k != "uuid"} == dict(d.attributes)


def test_instances_in_use_leave_out_every_placement_they_rule_out_and_stay_static_devices() -> None:
    inv = asyncio.run(mig_inventory(1, (0, "4g.40gb", 0), (0, "1g.10gb+me", 4)))
    pub = partitions.plan(inv)
    names = _by_name(pub)
    static = [d for d in pub.devices if not d.consumes]
    assert sorted(d.name for d in static) == ["gpu-0-mig-1g10gb-me-20-4", "gpu-0-mig-4g40gb-5-0"]
    assert all(d.uuid for d in static)
    placed = {d.placement for d in pub.devices if d.placement}
    # free: slices 5-7, 2 compute slices, no media extension left
    assert placed == {
        ("1g.10gb", 5),
        ("1g.10gb", 6),
        ("1g.20gb", 6),
    }
    (cs,) = pub.counter_sets
    assert cs.counters["compute-slices"] == 7 - 4 - 1 and cs.counters["media-extensions"] == 0
    assert "gpu-0-mig-7g80gb-0-0" not in names


def test_an_instance_a_claim_made_stays_its_placement_device_with_its_counters() -> None:
    inv = asyncio.run(mig_inventory(1, (0, "3g.40gb", 4)))
    gi = inv.gpus[0].mig_devices[0].gpu_instance_id
    pub = partitions.plan(inv, owned={0: {gi}})
    d = _by_name(pub)["gpu-0-mig-3g40gb-9-4"]
    assert d.consumes and d.uuid == inv.gpus[0].mig_devices[0].uuid and d.gpu_instance_id == gi
    assert len(pub.devices) == 25  # nothing left out: the scheduler counts it consumed through the claim
    assert len(partitions.plan(inv).devices) < 25  # not owned: the overlapping placements go


def _slices_for(pub: partitions.Publication) -> list[dict[str, Any]]:
    writes = resourceslices.plan(
        [],
        node="n",
        node_uid="u",
        driver="gpu.nvidia.com",
        devices=[d.api() for d in pub.devices],
        counter_sets=[c.api() for c in pub.counter_sets],
    )
    return list(writes.upserts)


def test_eight_gpus_split_into_slices_within_the_limits_each_set_with_its_consumers() -> None:
    pub = partitions.plan(asyncio.run(mig_inventory(8)))
    slices = _slices_for(pub)
    assert len(slices) == 4  # 25 devices and 10 counters per GPU: two GPUs a slice (64 devices, 32 counters)
    for sl in slices:
        assert slice_problems(sl) == []
        spec = sl["spec"]
        own = {c["name"] for c in spec["sharedCounters"]}
        assert len(own) == 2
        assert {c["counterSet"] for d in spec["devices"] for c in d.get("consumesCounters", [])} == own
        assert spec["pool"]["resourceSliceCount"] == 4
    # what the split avoids: one slice of everything breaks the apiserver's rules
    whole = {
        "spec": {
            "devices": [d.api() for d in pub.devices],
            "sharedCounters": [c.api() for c in pub.counter_sets],
        }
    }
    fields = {f for f, _ in slice_problems(whole)}
    assert {"spec.devices", "spec.sharedCounters"} <= fields


def test_a_device_whose_set_is_in_another_slice_is_refused_by_validation() -> None:
    pub = partitions.plan(asyncio.run(mig_inventory(1)))
    orphan = {"spec": {"devices": [pub.devices[0].api()], "sharedCounters": []}}
    assert any("must reference a counterSet" in m for _, m in slice_problems(orphan))
    with pytest.raises(ValueError, match="counter sets no device consumes"):
        resourceslices.chunks([], [pub.counter_sets[0].api()])


def test_creation_refuses_a_taken_placement_and_adopts_only_a_recorded_pending_one() -> None:
    inv = asyncio.run(mig_inventory(1, (0, "4g.40gb", 0), (0, "3g.40gb", 4)))
    gpu = inv.gpus[0]
    table = partitions.table_of(gpu, inv)
    assert table is not None
    with pytest.raises(partitions.PlacementTaken, match=r"gpu-0-mig-3g40gb-9-0: placement taken on GPU 0: .*overlaps"):
        partitions.creation(gpu, table, "3g.40gb", 0, owned=(), device="gpu-0-mig-3g40gb-9-0")
    with pytest.raises(partitions.PlacementTaken, match=r"overlaps 3g\.40gb at 4"):
        partitions.creation(gpu, table, "3g.40gb", 4, owned=(), device="d")
    adopted = partitions.creation(gpu, table, "3g.40gb", 4, owned=(), device="d", may_adopt=True)
    assert adopted.adopt is not None and adopted.adopt.start == 4
    gi4 = next(m.gpu_instance_id for m in gpu.mig_devices if m.placement_start == 4)
    with pytest.raises(partitions.PlacementTaken):  # another claim's instance is never adopted
        partitions.creation(gpu, table, "3g.40gb", 4, owned={gi4}, device="d", may_adopt=True)
    free = asyncio.run(mig_inventory(1, (0, "4g.40gb", 0)))
    made = partitions.creation(free.gpus[0], table, "3g.40gb", 4, owned=(), device="d")
    assert (made.profile, made.start, made.adopt) == ("3g.40gb", 4, None)


def test_chunks_keep_each_set_whole_and_bound_shared_counters_and_devices_per_slice() -> None:
    def counter_set(i: int, n: int) -> dict[str, Any]:
        return {"name": f"s{i}", "counters": {f"c{k}": {"value": "1"} for k in range(n)}}

    def device(i: int, j: int, n: int) -> dict[str, Any]:
        counters = {f"c{k}": {"value": "1"} for k in range(n)}
        return {"name": f"d{i}-{j}", "consumesCounters": [{"counterSet": f"s{i}", "counters": counters}]}

    # shared counters: 10 a set, 32 a slice -> three sets a slice
    parts = resourceslices.chunks([device(i, 0, 1) for i in range(4)], [counter_set(i, 10) for i in range(4)])
    assert [len(p.counter_sets) for p in parts] == [3, 1]
    # devices: 40 a set, 64 a slice with counters -> one set a slice
    parts = resourceslices.chunks(
        [device(i, j, 1) for i in range(2) for j in range(40)], [counter_set(i, 1) for i in range(2)]
    )
    assert [len(p.devices) for p in parts] == [40, 40]
    for p in parts:
        assert {c["counterSet"] for d in p.devices for c in d["consumesCounters"]} == {
            c["name"] for c in p.counter_sets
        }


def test_dynamic_mig_beside_a_mig_parted_config_is_refused_by_name() -> None:
    env = {
        "NODEAGENT_DRA__ENABLED": "true",
        "NODEAGENT_DEVICEPLUGIN__ENABLED": "false",
        "NODEAGENT_DRA__DYNAMIC_MIG": "1",
    }
    with pytest.raises(ConfigError) as err:
        loading.load(env={**env, "NODEAGENT_MIG__CONFIG": "all-1g.10gb"})
    assert str(err.value).startswith("dra.dynamic_mig: the MIG subsystem would apply mig-parted config 'all-1g.10gb'")
    assert loading.load(env=env).dra.dynamic_mig
