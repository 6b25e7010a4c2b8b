"""GetPreferredAllocation's policy (pure): NVLink and PCIe topology, NUMA, lost GPUs, replicas, MIG devices."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nodeagent.deviceplugin import preferred as policy
from nodeagent.deviceplugin.preferred import preferred
from nodeagent.deviceplugin.resources import PlannedDevice, PlannedResource, Unit, plan
from nodeagent.model.topology import Level, PairLink, Topology, pairs_of
from tests.deviceplugin.support import inventory


def resource(
    count: int,
    topology: Topology,
    *,
    numa: dict[int, int] | None = None,
    sick: frozenset[int] = frozenset(),
    mig: int = 0,
    replicas: int = 0,
) -> PlannedResource:
    """Devices ``g<i>`` (MIG ``g<i>m<j>``, replicas ``g<i>::<r>``) on GPUs 0..count-1."""
    devices = []
    for g in range(count):
        n = (numa or {}).get(g)
        if mig:
            for m in range(mig):
                unit = Unit(f"{g}:{m}", f"g{g}m{m}", g, profile="1g.10gb", numa_node=n, gpu_instance_id=m)
                devices.append(PlannedDevice(unit.uuid, unit, healthy=g not in sick))
        elif replicas:
            unit = Unit(str(g), f"g{g}", g, numa_node=n)
            devices += [PlannedDevice(f"g{g}::{r}", unit, r, healthy=g not in sick) for r in range(replicas)]
        else:
            unit = Unit(str(g), f"g{g}", g, numa_node=n)
            devices.append(PlannedDevice(unit.uuid, unit, healthy=g not in sick))
    return PlannedResource("nvidia.com/gpu", tuple(devices), shared=replicas > 0, topology=topology)


def ids(*gpus: int) -> tuple[str, ...]:
    return tuple(f"g{g}" for g in gpus)


def hgx(count: int = 8) -> Topology:
    """Every pair NVSwitch-connected with 18 links; two sockets."""
    half = count // 2
    return pairs_of(
        {
            (a, b): PairLink(Level.NODE if a // half == b // half else Level.SYSTEM, 18)
            for a in range(count)
            for b in range(a + 1, count)
        }
    )


def islands() -> Topology:
    """Two NVLink islands of four (0-3 and 4-7, 12 links each pair), PCIe across the CPUs between them."""
    return pairs_of(
        {
            (a, b): PairLink(Level.NODE, 12) if a // 4 == b // 4 else PairLink(Level.SYSTEM, 0)
            for a in range(8)
            for b in range(a + 1, 8)
        }
    )


def pcie_pairs() -> Topology:
    """L4s: two behind each PCIe switch, four per NUMA node, no NVLink."""

    def level(a: int, b: int) -> Level:
        if a // 4 != b // 4:
            return Level.SYSTEM
        return Level.SINGLE if a // 2 == b // 2 else Level.NODE

    return pairs_of({(a, b): PairLink(level(a, b)) for a in range(8) for b in range(a + 1, 8)})


INTERLEAVED = {g: g % 2 for g in range(8)}
"""NUMA nodes that disagree with the NVLink islands: a NUMA-only policy picks across the islands."""


@pytest.fixture(params=["exhaustive", "greedy"])
def search(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each table runs on both searches: every candidate set scored, and the greedy one (no limit)."""
    if request.param == "greedy":
        monkeypatch.setattr(policy, "EXHAUSTIVE_LIMIT", 0)
    yield request.param


CASES = [
    # name, resource, available, must_include, size, expected (as a set)
    ("hgx: four of eight from one socket", resource(8, hgx()), ids(*range(8)), (), 4, ids(0, 1, 2, 3)),
    ("hgx: the partner of a must-include", resource(8, hgx()), ids(*range(8)), ids(5), 2, ids(4, 5)),
    ("hgx: all eight", resource(8, hgx()), ids(*range(8)), (), 8, ids(*range(8))),
    ("islands: four from one island", resource(8, islands(), numa=INTERLEAVED), ids(*range(8)), (), 4, ids(0, 1, 2, 3)),
    ("islands: two in the island of a must-include", resource(8, islands(), numa=INTERLEAVED), ids(*range(8)),
     ids(6), 2, ids(4, 6)),
    ("islands: three, the island broken into first", resource(8, islands(), numa=INTERLEAVED),
     ids(0, 1, 2, 4, 5, 6, 7), (), 3, ids(0, 1, 2)),
    ("islands: four when one island lost a GPU", resource(8, islands(), numa=INTERLEAVED, sick=frozenset({1})),
     ids(*range(8)), (), 4, ids(4, 5, 6, 7)),
    ("islands: two from the broken island, the whole one kept", resource(8, islands(), numa=INTERLEAVED),
     ids(1, 2, 3, 4, 5, 6, 7), (), 2, ids(1, 2)),
    ("pcie: two behind one switch", resource(8, pcie_pairs()), ids(*range(8)), (), 2, ids(0, 1)),
    ("pcie: the switch partner of a must-include", resource(8, pcie_pairs()), ids(*range(8)), ids(3), 2, ids(2, 3)),
    ("pcie: four on one NUMA node", resource(8, pcie_pairs()), ids(0, 1, 2, 4, 5, 6, 7), (), 4, ids(4, 5, 6, 7)),
    ("no topology: NUMA decides", resource(8, Topology(), numa={g: g // 4 for g in range(8)}), ids(*range(8)),
     ids(6), 3, ids(4, 5, 6)),
    ("one lost GPU never fails the request", resource(8, hgx(), sick=frozenset({0})), ids(*range(8)), (), 8,
     ids(1, 2, 3, 4, 5, 6, 7)),
    ("an unlisted or unavailable ID is not given", resource(2, hgx(2)), ("g0", "nope"), (), 2, ids(0)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "r", "available", "must", "size", "want"), CASES, ids=[c[0] for c in CASES])
def test_preferred(
    search: str,
    name: str,
    r: PlannedResource,
    available: tuple[str, ...],
    must: tuple[str, ...],
    size: int,
    want: tuple[str, ...],
) -> None:
    got = preferred(r, available, must, size)
    assert set(got) == set(want), name
    assert got[: len(must)] == must  # must_include first
    assert len(got) == len(set(got))


def test_mig_devices_are_packed_on_one_gpu(search: str) -> None:
    r = resource(8, hgx(), mig=7)
    every = tuple(d.id for d in r.devices)
    got = preferred(r, every, (), 4)
    assert {d.split("m")[0] for d in got} == {"g0"}
    # GPU 0 has only two left: four of one GPU beat two and two
    left = tuple(i for i in every if i not in {"g0m0", "g0m1", "g0m2", "g0m3", "g0m4"})
    assert {d.split("m")[0] for d in preferred(r, left, (), 4)} == {"g1"}
    # the GPU of a must-include first, then the closest GPU
    got = preferred(r, every, ("g5m6",), 9)
    assert got[0] == "g5m6" and {d.split("m")[0] for d in got} == {"g5", "g4"}


def test_replicas_go_one_per_gpu_first(search: str) -> None:
    r = resource(2, hgx(2), replicas=4)
    every = tuple(d.id for d in r.devices)
    got = preferred(r, every, (), 3)
    assert sorted(g.split("::")[0] for g in got) == ["g0", "g0", "g1"]
    got = preferred(r, every, ("g1::2",), 2)
    assert got[0] == "g1::2" and {g.split("::")[0] for g in got} == {"g0", "g1"}


def test_the_greedy_search_serves_56_mig_devices_with_a_lost_gpu() -> None:
    r = resource(8, islands(), mig=7, sick=frozenset({0}))
    every = tuple(d.id for d in r.devices)
    got = preferred(r, every, (), 10)  # C(49, 10) sets: too many to score, so the greedy search
    gpus = {d.split("m")[0] for d in got}
    assert len(got) == 10 and "g0" not in gpus
    assert gpus <= set(ids(1, 2, 3)) or gpus <= set(ids(4, 5, 6, 7))  # one island


async def test_the_simulated_boards_reach_the_plan() -> None:
    hgx_plan = plan(await inventory(8), strategy="none").resources[0]
    assert len(hgx_plan.topology.pairs) == 28
    assert hgx_plan.topology.link(0, 7) == PairLink(Level.SYSTEM, 18)
    assert hgx_plan.topology.link(1, 2) == PairLink(Level.NODE, 18)
    l4 = plan(await inventory(4, "l4"), strategy="none").resources[0]
    assert l4.topology.link(0, 1) == PairLink(Level.SINGLE, 0)
    assert l4.topology.link(1, 2) == PairLink(Level.SYSTEM, 0)
    got = preferred(l4, tuple(d.id for d in l4.devices), (l4.devices[3].id,), 2)
    assert set(got) == {l4.devices[2].id, l4.devices[3].id}
