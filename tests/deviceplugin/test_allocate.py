"""Allocate and GetPreferredAllocation answers (pure)."""

from __future__ import annotations

import pytest

from nodeagent.backends.deviceplugin_server import AllocationRefused
from nodeagent.deviceplugin import allocate
from nodeagent.deviceplugin.resources import PlannedResource, SharedResource, TimeSlicing, plan
from tests.deviceplugin.support import inventory


async def gpus(count: int = 8, **kwargs: object) -> PlannedResource:
    inv = await inventory(count)
    adv = plan(inv, strategy="none", numa={g.index: g.numa_node for g in inv.gpus}, **kwargs)  # type: ignore[arg-type]
    resource = adv.resource("nvidia.com/gpu")
    assert resource is not None
    return resource


def names_of(resource: PlannedResource) -> frozenset[str]:
    return frozenset(f"nvidia.com/gpu={d.unit.uuid}" for d in resource.devices)


async def test_cdi_names_come_from_the_spec_and_a_missing_one_refuses_the_request() -> None:
    r = await gpus(2)
    ids = (r.devices[0].id, r.devices[1].id)
    got = allocate.answer(
        r, ids, strategies=("cdi-cri",), cdi_kind="nvidia.com/gpu", cdi_names=names_of(r), cdi_source="x"
    )
    assert got.cdi_devices == tuple(f"nvidia.com/gpu={d.unit.uuid}" for d in r.devices)
    only_first = frozenset({f"nvidia.com/gpu={r.devices[0].unit.uuid}"})
    with pytest.raises(AllocationRefused, match=r"the CDI spec /spec\.yaml names no device nvidia\.com/gpu=GPU-"):
        allocate.answer(
            r, ids, strategies=("cdi-cri",), cdi_kind="nvidia.com/gpu", cdi_names=only_first, cdi_source="/spec.yaml"
        )


async def test_unhealthy_and_too_many_replicas_are_refused() -> None:
    sick = plan(await inventory(2), strategy="none", unhealthy={0: "XID 79"}).resources[0]
    with pytest.raises(AllocationRefused, match="is unhealthy"):
        allocate.units_for(sick, (sick.devices[0].id,), fail_greater_than_one=False)
    shared = await gpus(2, sharing=TimeSlicing((SharedResource(4),)))
    two = (shared.devices[0].id, shared.devices[5].id)
    assert len(allocate.units_for(shared, two, fail_greater_than_one=False)) == 2
    with pytest.raises(AllocationRefused, match="maximum request size for shared resources is 1"):
        allocate.units_for(shared, two, fail_greater_than_one=True)
    same_gpu = (shared.devices[0].id, shared.devices[1].id)
    assert len(allocate.units_for(shared, same_gpu, fail_greater_than_one=False)) == 1  # one GPU, named once


async def test_preferred_keeps_numa_skips_unhealthy_and_spreads_replicas() -> None:
    r = await gpus(8)
    ids = tuple(d.id for d in r.devices)
    assert allocate.preferred(r, ids, (), 4) == ids[:4]
    assert set(allocate.preferred(r, ids, (ids[6],), 3)) <= set(ids[4:])
    inv = await inventory(8)
    sick = plan(inv, strategy="none", unhealthy={0: "lost"}, numa={g.index: g.numa_node for g in inv.gpus})
    resource = sick.resources[0]
    # GPU 0 lost: skipped, the request still served, from the NUMA node already broken into (GPUs 1-3), so
    # that GPUs 4-7 stay whole for a 4-GPU request
    assert allocate.preferred(resource, ids, (), 2) == ids[1:3]
    shared = await gpus(2, sharing=TimeSlicing((SharedResource(4),)), id_strategy="index")
    got = allocate.preferred(shared, tuple(d.id for d in shared.devices), (), 2)
    assert {g.split("::")[0] for g in got} == {"0", "1"}
