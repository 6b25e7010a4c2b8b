"""One contract, two GPU backends: the simulator and NVML (over the fake pynvml) behave the same way.

Every case runs against both, through a small adapter that knows how to cause the fault on that backend
(a hung call, a GPU fallen off the bus, a reading the GPU does not support, an XID). What is checked is
only what ``GpuBackend`` promises, so a consumer (metrics, CDI, the GPU-state owner) cannot tell the two
apart.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Protocol

import pytest

from nodeagent.backends.gpu.nvml.backend import NvmlBackend
from nodeagent.backends.gpu.protocols import GpuBackend
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.model.gpu import GpuHealthState, Reading, SampleRequest
from tests.backends.fake_nvml import FakeDevice, FakeNvml, h100_node

TIMEOUT_S = 0.2
REQUEST = SampleRequest(frozenset({Reading.GPU_TEMP_C, Reading.POWER_W}))


class Faults(Protocol):
    backend: GpuBackend

    def hang(self, gpu: int) -> None: ...

    def end_hang(self, gpu: int) -> None: ...

    def lose(self, gpu: int) -> None: ...

    def power_not_supported(self, gpu: int) -> None: ...

    def xid(self, gpu: int, xid: int) -> None: ...


class SimFaults:
    def __init__(self) -> None:
        self.sim = SimGpuBackend("h100-80gb-hbm3", 3, 0, call_timeout_s=TIMEOUT_S)
        self.backend: GpuBackend = self.sim

    def hang(self, gpu: int) -> None:
        self.sim.hang_calls(gpu, 30.0)

    def end_hang(self, gpu: int) -> None:
        self.sim.hang_calls(gpu, 0)

    def lose(self, gpu: int) -> None:
        self.sim.lose_gpu(gpu)

    def power_not_supported(self, gpu: int) -> None:
        self.sim.set_not_supported([Reading.POWER_W], gpu_index=gpu)

    def xid(self, gpu: int, xid: int) -> None:
        self.sim.inject_xid(gpu, xid)


class NvmlFaults:
    def __init__(self) -> None:
        self.devices: list[FakeDevice] = h100_node(3)
        self.fake = FakeNvml(self.devices)
        self.backend = NvmlBackend(nvml=self.fake, call_timeout_s=TIMEOUT_S)

    def hang(self, gpu: int) -> None:
        self.devices[gpu].hang_on = "nvmlDeviceGetTemperature"

    def end_hang(self, gpu: int) -> None:
        self.devices[gpu].hang_on = ""
        self.devices[gpu].release.set()

    def lose(self, gpu: int) -> None:
        self.devices[gpu].lost = True

    def power_not_supported(self, gpu: int) -> None:
        self.devices[gpu].not_supported.add("nvmlDeviceGetPowerUsage")

    def xid(self, gpu: int, xid: int) -> None:
        self.fake.xid(self.devices[gpu], xid)


@pytest.fixture(params=["sim", "nvml"])
async def faults(request: pytest.FixtureRequest) -> AsyncIterator[Faults]:
    chosen: Faults = SimFaults() if request.param == "sim" else NvmlFaults()
    await chosen.backend.open()
    try:
        yield chosen
    finally:
        for gpu in range(3):
            chosen.end_hang(gpu)
        await chosen.backend.close()


async def test_inventory_lists_every_gpu_healthy(faults: Faults) -> None:
    inventory = await faults.backend.inventory()
    assert [g.index for g in inventory.gpus] == [0, 1, 2]
    assert len({g.uuid for g in inventory.gpus}) == 3
    assert all(g.health is GpuHealthState.OK for g in inventory.gpus)
    assert inventory.driver_version


async def test_a_hung_call_degrades_only_that_gpu_within_the_timeout(faults: Faults) -> None:
    faults.hang(1)
    started = time.perf_counter()
    sample = await faults.backend.sample(REQUEST)
    assert time.perf_counter() - started < 10 * TIMEOUT_S
    assert sample.health[1] is GpuHealthState.DEGRADED
    assert sample.health[0] is GpuHealthState.OK and sample.health[2] is GpuHealthState.OK
    assert Reading.GPU_TEMP_C in sample.gpus[0] and Reading.GPU_TEMP_C in sample.gpus[2]
    assert (await faults.backend.inventory()).gpu(1).health is GpuHealthState.DEGRADED


async def test_a_lost_gpu_is_lost_and_the_others_are_read(faults: Faults) -> None:
    faults.lose(2)
    sample = await faults.backend.sample(REQUEST)
    assert sample.health[2] is GpuHealthState.LOST
    assert 2 not in sample.gpus
    assert {0, 1} <= set(sample.gpus)
    inventory = await faults.backend.inventory()
    assert inventory.gpu(2).health is GpuHealthState.LOST and inventory.gpu(2).uuid


async def test_not_supported_is_absent_not_a_failure(faults: Faults) -> None:
    faults.power_not_supported(0)
    for _ in range(2):  # also on the next sweep, when it is not asked again
        sample = await faults.backend.sample(REQUEST)
        assert Reading.POWER_W not in sample.gpus[0]
        assert Reading.POWER_W in sample.gpus[1]
        assert Reading.GPU_TEMP_C in sample.gpus[0]
        assert not sample.failures
        assert sample.health[0] is GpuHealthState.OK


async def test_an_xid_is_reported_once_with_its_gpu(faults: Faults) -> None:
    inventory = await faults.backend.inventory()
    faults.xid(1, 48)
    first = await faults.backend.sample(REQUEST)
    assert [(e.gpu_index, e.gpu_uuid, e.xid) for e in first.xids] == [(1, inventory.gpu(1).uuid, 48)]
    second = await faults.backend.sample(REQUEST)
    assert second.xids == ()


async def test_paused_gpus_are_not_touched(faults: Faults) -> None:
    faults.hang(0)  # a paused GPU is not asked at all, so its hang cannot slow the sweep
    paused = SampleRequest(REQUEST.readings, skip_gpus=frozenset({0}))
    started = time.perf_counter()
    sample = await faults.backend.sample(paused)
    assert time.perf_counter() - started < TIMEOUT_S
    assert set(sample.gpus) == {1, 2} and 0 not in sample.health
