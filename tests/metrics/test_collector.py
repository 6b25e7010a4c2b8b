"""Sampling tiers, one hop per sweep, carried slow values, XIDs and the immutable snapshot."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nodeagent.metrics.collector import Collector, split_tiers
from nodeagent.metrics.fields import default_counters
from nodeagent.model.gpu import Reading
from tests.metrics.fakes import FakeGpus


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make(gpus: FakeGpus, clock: Clock) -> Collector:
    return Collector(gpus, default_counters(), slow_interval_s=30.0, clock=clock)


def test_split_tiers_of_the_default_set() -> None:
    fast, slow = split_tiers(default_counters())
    assert Reading.GPU_TEMP_C in fast and Reading.FB_USED_MIB in fast
    assert Reading.TOTAL_ENERGY_MJ in slow and Reading.GR_ENGINE_ACTIVE in slow
    assert Reading.NVLINK_BANDWIDTH_TOTAL in slow
    assert not fast & slow


async def test_one_hop_per_sweep_and_slow_tier_only_when_due() -> None:
    gpus, clock = FakeGpus(2), Clock()
    collector = make(gpus, clock)
    inv = await gpus.inventory()
    first = await collector.sweep(inv)
    assert len(gpus.requests) == 1
    assert first.slow
    assert Reading.TOTAL_ENERGY_MJ in gpus.requests[0].readings

    clock.t += 10
    gpus.values[0][Reading.TOTAL_ENERGY_MJ] = 999.0  # would only be seen by a slow sweep
    gpus.values[0][Reading.GPU_TEMP_C] = 61
    second = await collector.sweep(inv)
    assert len(gpus.requests) == 2, "exactly one backend call per sweep"
    assert not second.slow
    assert Reading.TOTAL_ENERGY_MJ not in gpus.requests[1].readings
    assert second.gpus[0][Reading.GPU_TEMP_C] == 61, "fast fields are fresh"
    assert second.gpus[0][Reading.TOTAL_ENERGY_MJ] == 2528108, "slow fields carried from the last slow sweep"

    clock.t += 20
    third = await collector.sweep(inv)
    assert third.slow
    assert third.gpus[0][Reading.TOTAL_ENERGY_MJ] == 999.0


async def test_unsupported_readings_stay_absent() -> None:
    gpus, clock = FakeGpus(1), Clock()
    del gpus.values[0][Reading.MEMORY_TEMP_C]
    snap = await make(gpus, clock).sweep(await gpus.inventory())
    assert Reading.MEMORY_TEMP_C not in snap.gpus[0]
    assert Reading.NVLINK_BANDWIDTH_TOTAL not in snap.gpus[0]


async def test_slow_value_dropped_when_a_later_slow_sweep_lacks_it() -> None:
    gpus, clock = FakeGpus(1), Clock()
    collector = make(gpus, clock)
    inv = await gpus.inventory()
    await collector.sweep(inv)
    del gpus.values[0][Reading.TOTAL_ENERGY_MJ]
    clock.t += 31
    snap = await collector.sweep(inv)
    assert Reading.TOTAL_ENERGY_MJ not in snap.gpus[0], "a stale slow value is never served as current"


async def test_mig_values_and_include_mig() -> None:
    gpus, clock = FakeGpus(2, migs=3), Clock()
    collector = make(gpus, clock)
    snap = await collector.sweep(await gpus.inventory())
    assert gpus.requests[0].include_mig
    assert set(snap.mig) == {(g, gi) for g in (0, 1) for gi in (7, 8, 9)}
    assert snap.mig[(1, 8)][Reading.FB_USED_MIB] == 984
    plain = FakeGpus(1)
    plain.gpus[0] = replace(plain.gpus[0], mig_capable=False)
    await make(plain, clock).sweep(await plain.inventory())
    assert not plain.requests[0].include_mig


async def test_xids_last_per_gpu_and_totals() -> None:
    gpus, clock = FakeGpus(3), Clock()
    collector = make(gpus, clock)
    inv = await gpus.inventory()
    snap = await collector.sweep(inv)
    assert dict(snap.last_xid) == {0: 0, 1: 0, 2: 0}
    gpus.inject_xid(1, 79)
    gpus.inject_xid(1, 48)
    gpus.inject_xid(2, 79)
    snap = await collector.sweep(inv)
    assert dict(snap.last_xid) == {0: 0, 1: 48, 2: 79}
    assert [x.xid for x in snap.xids] == [79, 48, 79]
    snap = await collector.sweep(inv)
    assert snap.last_xid[1] == 48, "the last XID stays until another one comes"
    assert snap.xids == ()
    assert collector.totals.xids == {79: 2, 48: 1}


async def test_call_failures_accumulate() -> None:
    gpus, clock = FakeGpus(1), Clock()
    collector = make(gpus, clock)
    inv = await gpus.inventory()
    gpus.failures = {"nvmlDeviceGetPowerUsage": 2}
    await collector.sweep(inv)
    gpus.failures = {"nvmlDeviceGetPowerUsage": 1, "nvmlDeviceGetTemperature": 1}
    await collector.sweep(inv)
    assert collector.totals.call_failures == {"nvmlDeviceGetPowerUsage": 3, "nvmlDeviceGetTemperature": 1}


async def test_snapshot_is_immutable() -> None:
    gpus, clock = FakeGpus(1), Clock()
    collector = make(gpus, clock)
    inv = await gpus.inventory()
    snap = await collector.sweep(inv)
    with pytest.raises(TypeError):
        snap.gpus[0][Reading.GPU_TEMP_C] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        snap.last_xid[0] = 1  # type: ignore[index]
    gpus.values[0][Reading.GPU_TEMP_C] = 99
    gpus.inject_xid(0, 31)
    await collector.sweep(inv)
    assert snap.gpus[0][Reading.GPU_TEMP_C] == 50, "a later sweep does not change an earlier snapshot"
    assert snap.last_xid[0] == 0


async def test_profiling_fields_are_in_the_first_snapshot() -> None:
    """GPM needs two samples: the collector takes the first one before its first sweep (issue point 4)."""
    from nodeagent.backends.gpu.sim.backend import SimGpuBackend
    from nodeagent.model.gpu import Reading as R

    sim = SimGpuBackend(count=2, mig_layout="3g.40gb*2")
    await sim.open()
    try:
        collector = Collector(sim, default_counters(), slow_interval_s=30.0, gpm_prime_interval_s=0.01)
        snap = await collector.sweep(await sim.inventory())
        assert all(R.GR_ENGINE_ACTIVE in v and R.PIPE_TENSOR_ACTIVE in v for v in snap.gpus.values())
        assert snap.mig and all(R.GR_ENGINE_ACTIVE in v for v in snap.mig.values()), "MIG instances too"
        unprimed = Collector(sim, default_counters(), slow_interval_s=30.0)  # no priming: as before
        fresh = SimGpuBackend(count=1)
        await fresh.open()
        try:
            unprimed.gpus = fresh
            first = await unprimed.sweep(await fresh.inventory())
            assert R.GR_ENGINE_ACTIVE not in first.gpus[0], "the backend really needs two samples"
        finally:
            await fresh.close()
    finally:
        await sim.close()
