"""The simulated GPUs: identities, plausible readings, faults and MIG with the real placement rules."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodeagent.backends.gpu.protocols import GpuBackend, MigInUse, MigResetUnavailable
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.errors import ConfigError, MigOperationError
from nodeagent.model.gpu import GPM_READINGS, MIG_READINGS, GpuHealthState, Reading, SampleRequest
from nodeagent.model.mig import GpuProcess
from tests.backends.test_nvml import Ticker

ALL = SampleRequest(frozenset(Reading))


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def sim() -> AsyncIterator[SimGpuBackend]:
    backend = SimGpuBackend(call_timeout_s=0.1, degraded_backoff_s=60.0)
    await backend.open()
    yield backend
    await backend.close()


async def test_is_a_gpu_backend_with_eight_h100(sim: SimGpuBackend) -> None:
    assert isinstance(sim, GpuBackend)
    inv = await sim.inventory()
    assert (inv.backend, inv.driver_version, inv.cuda_driver_version) == ("sim", "580.159.04", 13000)
    assert len(inv.gpus) == 8
    assert {(g.name, g.memory_total_mib, g.pci_device_id) for g in inv.gpus} == {
        ("NVIDIA H100 80GB HBM3", 81559, 0x2330)
    }
    assert inv.mig_profiles["NVIDIA H100 80GB HBM3"][0].name == "1g.10gb"


# ------------------------------------------------------------------------------------------ identity


async def _identity(seed: int, profile: str = "h100-80gb-hbm3") -> list[tuple[str, str, int, str]]:
    backend = SimGpuBackend(profile, 8, seed)
    inv = await backend.inventory()
    await backend.close()
    return [(g.uuid, g.pci_bus_id, g.minor_number, g.serial) for g in inv.gpus]


async def test_identities_are_stable_per_seed_and_look_real() -> None:
    a, b, c = await _identity(7), await _identity(7), await _identity(8)
    assert a == b
    assert {x[0] for x in a}.isdisjoint(x[0] for x in c)
    assert [x[1] for x in a] != [x[1] for x in c]
    for uuid, bus, _, serial in a:
        assert re.fullmatch(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", uuid)
        assert re.fullmatch(r"00000000:[0-9A-F]{2}:00\.0", bus)
        assert re.fullmatch(r"1651\d{9}", serial)
    assert [x[1] for x in a] == sorted(x[1] for x in a)  # NVML indexes GPUs in PCI bus order
    assert sorted(x[2] for x in a) == list(range(8))
    assert len({x[0] for x in a}) == 8


# ------------------------------------------------------------------------------------------ readings


async def test_every_supported_reading_is_there_and_nothing_else() -> None:
    seen = {}
    for profile in ("h100-80gb-hbm3", "t4", "a100-sxm4-40gb"):
        backend = SimGpuBackend(profile, 2, 0)
        first = await backend.sample(ALL)
        second = await backend.sample(ALL)
        await backend.close()
        no_gpm = frozenset() if backend.profile.gpm_supported else GPM_READINGS  # NVML's GPM: Hopper and newer
        supported = frozenset(Reading) - backend.profile.not_supported - no_gpm
        assert set(second.gpus[0]) == supported, profile
        assert set(first.gpus[0]) == supported - GPM_READINGS, profile  # GPM needs two samples
        seen[profile] = second.gpus[0]
    assert Reading.RETIRED_SBE in seen["t4"] and Reading.RETIRED_SBE not in seen["h100-80gb-hbm3"]
    assert Reading.CORRECTABLE_REMAPPED_ROWS not in seen["t4"]
    assert Reading.SM_ACTIVE in seen["h100-80gb-hbm3"] and Reading.SM_ACTIVE not in seen["a100-sxm4-40gb"]
    assert Reading.NVLINK_BANDWIDTH_TOTAL in seen["a100-sxm4-40gb"]


async def test_energy_counts_up_and_fb_adds_up() -> None:
    clock = Clock()
    backend = SimGpuBackend("h100-80gb-hbm3", 8, 3, clock=clock)
    last: dict[int, float] = {}
    for _ in range(50):
        s = await backend.sample(ALL)
        for i, v in s.gpus.items():
            assert (
                v[Reading.FB_USED_MIB] + v[Reading.FB_FREE_MIB] + v[Reading.FB_RESERVED_MIB] == v[Reading.FB_TOTAL_MIB]
            )
            assert v[Reading.FB_TOTAL_MIB] == 81559 and v[Reading.FB_RESERVED_MIB] == 480
            assert v[Reading.FB_USED_MIB] >= 0
            assert v[Reading.TOTAL_ENERGY_MJ] > last.get(i, 0)
            assert 0 <= v[Reading.GPU_UTIL_PCT] <= 100
            assert 78.5 * 0.9 <= v[Reading.POWER_W] <= 700
            last[i] = v[Reading.TOTAL_ENERGY_MJ]
        clock.t += 10.0
    await backend.close()


async def test_power_follows_load_and_temperature_lags_behind() -> None:
    clock = Clock()
    backend = SimGpuBackend("h100-80gb-hbm3", 1, 0, clock=clock)
    backend.set_workload(0, 0)
    req = SampleRequest(frozenset({Reading.POWER_W, Reading.GPU_TEMP_C, Reading.TOTAL_ENERGY_MJ, Reading.SM_CLOCK_MHZ}))

    async def advance(seconds: float, step: float = 1.0) -> dict[Reading, float]:
        end = clock.t + seconds
        while clock.t < end:
            clock.t += step
            s = await backend.sample(req)
        return dict(s.gpus[0])

    idle = await advance(600)
    assert idle[Reading.POWER_W] == pytest.approx(78.5, rel=0.05)
    assert idle[Reading.GPU_TEMP_C] == pytest.approx(50, abs=1)
    assert idle[Reading.SM_CLOCK_MHZ] == 345
    backend.set_workload(0, 100)
    early = await advance(10)
    assert early[Reading.POWER_W] > 500  # power answers within seconds
    assert early[Reading.SM_CLOCK_MHZ] == 1980
    assert early[Reading.GPU_TEMP_C] < 62  # temperature has barely started to move
    hot = await advance(300)
    assert hot[Reading.GPU_TEMP_C] > 75
    assert hot[Reading.TOTAL_ENERGY_MJ] - early[Reading.TOTAL_ENERGY_MJ] == pytest.approx(
        300 * hot[Reading.POWER_W] * 1000, rel=0.1
    )
    backend.set_workload(0, 0)
    cooling = await advance(10)
    assert cooling[Reading.POWER_W] < 150
    assert cooling[Reading.GPU_TEMP_C] > 70  # still hot: it follows power with a lag
    await backend.close()


async def test_readings_are_deterministic_for_a_seed_and_clock() -> None:
    async def run(seed: int) -> list[dict[Reading, float]]:
        clock = Clock()
        backend = SimGpuBackend("h100-80gb-hbm3", 2, seed, clock=clock)
        out = []
        for _ in range(5):
            clock.t += 10
            out.append(dict((await backend.sample(ALL)).gpus[1]))
        await backend.close()
        return out

    assert await run(1) == await run(1)
    assert await run(1) != await run(2)


async def test_sample_of_eight_gpus_with_seven_mig_each_is_cheap() -> None:
    backend = SimGpuBackend("h100-80gb-hbm3", 8, 0, mig_layout="1g.10gb*7")
    await backend.sample(ALL)
    start = time.perf_counter()
    for _ in range(50):
        s = await backend.sample(ALL)
    per_sample = (time.perf_counter() - start) / 50
    await backend.close()
    assert len(s.mig) == 56
    assert per_sample < 0.01, f"{per_sample * 1000:.2f} ms per sample"


# ---------------------------------------------------------------------------------------------- faults


async def test_injected_xid_shows_up_once(sim: SimGpuBackend) -> None:
    sim.inject_xid(3, 48)
    sim.inject_xid(1, 31, gpu_instance_id=7, compute_instance_id=0)
    s = await sim.sample(SampleRequest(frozenset()))
    uuids = {g.index: g.uuid for g in (await sim.inventory()).gpus}
    assert [(e.gpu_index, e.gpu_uuid, e.xid, e.gpu_instance_id) for e in s.xids] == [
        (3, uuids[3], 48, None),
        (1, uuids[1], 31, 7),
    ]
    assert (await sim.sample(SampleRequest(frozenset()))).xids == ()
    with pytest.raises(IndexError):
        sim.inject_xid(8, 13)


async def test_lost_gpu_and_reset(sim: SimGpuBackend) -> None:
    sim.lose_gpu(2)
    s = await sim.sample(ALL)
    assert s.health[2] == GpuHealthState.LOST
    assert 2 not in s.gpus and len(s.gpus) == 7
    assert [e.xid for e in s.xids] == [79]  # fallen off the bus
    inv = await sim.inventory()
    assert inv.gpu(2).health == GpuHealthState.LOST and "GPU is lost" in inv.gpu(2).health_reason
    await sim.reset_gpu(2)
    s = await sim.sample(ALL)
    assert s.health[2] == GpuHealthState.OK and 2 in s.gpus


async def test_hung_calls_take_the_worker_timeout_path(sim: SimGpuBackend) -> None:
    sim.hang_calls(5, 30.0)
    async with Ticker() as ticker:
        start = time.perf_counter()
        s = await sim.sample(ALL)
        took = time.perf_counter() - start
    assert 0.1 <= took < 1.0
    assert ticker.max_gap < 0.08, f"loop blocked for {ticker.max_gap:.3f}s"
    assert set(s.gpus) == {0, 1, 2, 3, 4, 6, 7}  # the GPUs after the hung one were still read
    assert s.health[5] == GpuHealthState.DEGRADED
    assert s.failures == {"sim_read_gpu": 1}
    inv = await sim.inventory()
    assert inv.gpu(5).health == GpuHealthState.DEGRADED
    assert "did not return within 0.1s" in inv.gpu(5).health_reason
    start = time.perf_counter()
    s = await sim.sample(ALL)  # in its backoff: skipped, no waiting
    assert time.perf_counter() - start < 0.1 and 5 not in s.gpus
    with pytest.raises(Exception, match="did not return"):
        await sim.create_gpu_instance(5, "1g.10gb")  # MIG calls hang the same way


async def test_hung_gpu_comes_back_after_the_backoff() -> None:
    mono = Clock(100.0)
    backend = SimGpuBackend("t4", 2, 0, call_timeout_s=0.05, degraded_backoff_s=30.0, monotonic=mono)
    backend.hang_calls(0, 10.0)  # simulated time: hung until mono 110
    assert (await backend.sample(ALL)).health[0] == GpuHealthState.DEGRADED
    mono.t = 120.0
    assert (await backend.sample(ALL)).health[0] == GpuHealthState.DEGRADED  # backoff until 130
    mono.t = 131.0
    s = await backend.sample(ALL)
    assert s.health[0] == GpuHealthState.OK and 0 in s.gpus
    await backend.close()


async def test_set_not_supported(sim: SimGpuBackend) -> None:
    sim.set_not_supported([Reading.POWER_W, Reading.GPU_TEMP_C], gpu_index=1)
    s = await sim.sample(ALL)
    assert Reading.POWER_W not in s.gpus[1] and Reading.GPU_TEMP_C not in s.gpus[1]
    assert Reading.POWER_W in s.gpus[0]
    sim.set_not_supported([Reading.ENC_UTIL_PCT])
    s = await sim.sample(ALL)
    assert all(Reading.ENC_UTIL_PCT not in v for v in s.gpus.values())


# ------------------------------------------------------------------------------------------------ MIG


async def test_mig_mode_is_pending_until_reset(sim: SimGpuBackend) -> None:
    assert await sim.set_mig_mode(0, True) is True
    g = (await sim.inventory()).gpu(0)
    assert (g.mig_enabled, g.mig_pending) == (False, True)
    with pytest.raises(MigOperationError, match="pending: reset the GPU"):
        await sim.create_gpu_instance(0, "1g.10gb")
    await sim.reset_gpu(0)
    g = (await sim.inventory()).gpu(0)
    assert (g.mig_enabled, g.mig_pending) == (True, True)
    dev = await sim.create_gpu_instance(0, "3g.40gb")
    assert (dev.gpu_instance_id, dev.placement_start, dev.placement_size, dev.memory_total_mib) == (1, 0, 4, 40448)
    assert dev.uuid.startswith("MIG-") and dev.compute_instance_id == 0


async def test_mig_placement_rules(sim: SimGpuBackend) -> None:
    await sim.set_mig_mode(1, True)
    await sim.reset_gpu(1)
    await sim.create_gpu_instance(1, "3g.40gb", start=4)
    with pytest.raises(MigOperationError, match=r"cannot start at memory slice 1"):
        await sim.create_gpu_instance(1, "2g.20gb", start=1)
    with pytest.raises(MigOperationError, match=r"overlaps 3g\.40gb at 4:4"):
        await sim.create_gpu_instance(1, "2g.20gb", start=4)
    await sim.create_gpu_instance(1, "3g.40gb", start=0)
    with pytest.raises(MigOperationError, match=r"no free placement for 4g\.40gb"):
        await sim.create_gpu_instance(1, "4g.40gb")
    await sim.destroy_gpu_instance(1, 1)
    me = await sim.create_gpu_instance(1, "1g.10gb+me")
    assert me.placement_start == 0 and me.gpu_instance_id == 7
    with pytest.raises(MigOperationError, match="at most 1 instance"):
        await sim.create_gpu_instance(1, "1g.10gb+me")
    with pytest.raises(MigOperationError, match=r"unknown MIG profile '2g\.10gb'.*valid: 1g\.10gb"):
        await sim.create_gpu_instance(1, "2g.10gb")
    with pytest.raises(MigOperationError, match="no GPU instance 3"):
        await sim.destroy_gpu_instance(1, 3)
    with pytest.raises(MigOperationError, match="destroy its 2 GPU instance"):
        await sim.set_mig_mode(1, False)
    devices = (await sim.inventory()).gpu(1).mig_devices
    assert [(d.mig_index, d.gpu_instance_id, d.profile) for d in devices] == [(0, 2, "3g.40gb"), (1, 7, "1g.10gb+me")]
    await sim.reset_gpu(1)  # instances do not survive a reset
    assert (await sim.inventory()).gpu(1).mig_devices == ()


async def test_mig_layout_at_construction_and_per_instance_readings() -> None:
    backend = SimGpuBackend("h100-80gb-hbm3", 2, 5, mig_layout="3g.40gb,4g.40gb")
    inv = await backend.inventory()
    for g in inv.gpus:
        assert g.mig_enabled and g.mig_pending
        assert [(d.profile, d.placement_start, d.gpu_instance_id) for d in g.mig_devices] == [
            ("4g.40gb", 0, 1),
            ("3g.40gb", 4, 2),
        ]
    again = SimGpuBackend("h100-80gb-hbm3", 2, 5, mig_layout="3g.40gb,4g.40gb")
    assert [d.uuid for d in (await again.inventory()).gpu(1).mig_devices] == [d.uuid for d in inv.gpu(1).mig_devices]
    await again.close()
    req = SampleRequest(frozenset(Reading))
    await backend.sample(req)
    s = await backend.sample(req)
    assert set(s.mig) == {(0, 1), (0, 2), (1, 1), (1, 2)}
    for values in s.mig.values():
        assert set(values) == MIG_READINGS
        total = 40448
        assert values[Reading.FB_TOTAL_MIB] == total
        assert values[Reading.FB_USED_MIB] + values[Reading.FB_FREE_MIB] + values[Reading.FB_RESERVED_MIB] == total
        assert 0 <= values[Reading.GR_ENGINE_ACTIVE] <= 1
    assert Reading.GPU_UTIL_PCT not in s.gpus[0]  # NVML does not report it on a MIG-enabled GPU
    no_mig = await backend.sample(SampleRequest(frozenset(Reading), include_mig=False))
    assert no_mig.mig == {}
    await backend.close()


async def test_eight_by_seven_mig_layout() -> None:
    backend = SimGpuBackend(mig_layout="1g.10gb*7")
    inv = await backend.inventory()
    assert [len(g.mig_devices) for g in inv.gpus] == [7] * 8
    assert [d.gpu_instance_id for d in inv.gpu(0).mig_devices] == list(range(7, 14))
    assert len({d.uuid for g in inv.gpus for d in g.mig_devices}) == 56
    await backend.close()


def test_bad_layouts_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown MIG profile '1g\.5gb'.*valid: 1g\.10gb"):
        SimGpuBackend(mig_layout="1g.5gb*7")
    with pytest.raises(ConfigError, match="not MIG-capable"):
        SimGpuBackend("t4", mig_layout="1g.10gb")
    with pytest.raises(ConfigError, match=r"simulation\.count"):
        SimGpuBackend(count=0)


async def test_mig_on_a_gpu_without_mig() -> None:
    backend = SimGpuBackend("l4", 1, 0)
    with pytest.raises(MigOperationError, match="not MIG-capable"):
        await backend.set_mig_mode(0, True)
    await backend.close()


async def test_a_sweep_queued_behind_a_hung_one_still_runs() -> None:
    """inventory() and sample() from two tasks share the worker; when the first hangs and its thread is
    abandoned, the second (queued behind it) runs on the fresh thread instead of being cancelled."""
    backend = SimGpuBackend("t4", 3, 0, call_timeout_s=0.1)
    backend.hang_calls(0, 30.0)
    sample, inventory = await asyncio.gather(backend.sample(ALL), backend.inventory())
    assert set(sample.gpus) == {1, 2} and sample.health[0] == GpuHealthState.DEGRADED
    assert [g.health for g in inventory.gpus] == [GpuHealthState.DEGRADED, GpuHealthState.OK, GpuHealthState.OK]
    assert sample.failures == {"sim_read_gpu": 1}  # the queued sweep skipped the GPU that just hung
    assert backend._sweeper.worker.abandoned == 1
    await backend.close()


async def test_a_gpu_that_keeps_hanging_is_no_longer_retried_and_threads_are_given_back() -> None:
    mono = Clock(0.0)
    backend = SimGpuBackend("t4", 2, 0, call_timeout_s=0.05, degraded_backoff_s=10.0, monotonic=mono)
    backend.hang_calls(1, 1e9)
    for step in range(5):
        mono.t = step * 1000.0  # past any backoff
        s = await backend.sample(ALL)
        assert s.health[1] == GpuHealthState.DEGRADED and 0 in s.gpus
    inv = await backend.inventory()
    assert "no longer retried" in inv.gpu(1).health_reason
    worker = backend._sweeper.worker
    assert worker.abandoned == 3  # one stranded thread per hang, and only three hangs
    backend._release.set()  # the hung calls return (late): their threads are no longer counted
    for _ in range(100):
        if worker.abandoned == 0:
            break
        await asyncio.sleep(0.01)
    assert worker.abandoned == 0
    await backend.close()


async def test_mig_recreated_instance_gets_a_new_uuid(sim: SimGpuBackend) -> None:
    await sim.set_mig_mode(2, True)
    await sim.reset_gpu(2)
    first = await sim.create_gpu_instance(2, "3g.40gb", start=4)
    await sim.destroy_gpu_instance(2, first.gpu_instance_id)
    again = await sim.create_gpu_instance(2, "3g.40gb", start=4)
    assert again.gpu_instance_id == first.gpu_instance_id
    assert again.uuid != first.uuid and again.uuid.startswith("MIG-")


async def test_mig_state_persists_across_backends(tmp_path: Path) -> None:
    state = tmp_path / "state" / "sim-mig.json"
    one = SimGpuBackend("h100-80gb-hbm3", 2, 3)
    one.use_state_file(state)
    await one.set_mig_mode(1, True)
    await one.reset_gpu(1)
    made = await one.create_gpu_instance(1, "2g.20gb", start=2)
    one.set_holders(1, [GpuProcess(4242, "python", 0, made.gpu_instance_id, 900)])
    await one.close()
    two = SimGpuBackend("h100-80gb-hbm3", 2, 3)
    two.use_state_file(state)
    await two.open()
    inv = await two.inventory()
    assert inv.gpu(1).mig_enabled and not inv.gpu(0).mig_enabled
    assert [(d.profile, d.placement_start, d.uuid) for d in inv.gpu(1).mig_devices] == [("2g.20gb", 2, made.uuid)]
    assert await two.gpu_processes(1) == (GpuProcess(4242, "python", 1, made.gpu_instance_id, 900),)
    other = await two.create_gpu_instance(1, "2g.20gb", start=0)
    assert other.uuid != made.uuid
    await two.close()
    # A different node (seed) ignores the file and starts from its own state.
    three = SimGpuBackend("h100-80gb-hbm3", 2, 4)
    three.use_state_file(state)
    assert not (await three.inventory()).gpu(1).mig_enabled
    await three.close()


async def test_mig_reset_can_be_blocked(sim: SimGpuBackend) -> None:
    await sim.set_mig_mode(0, True)
    sim.block_reset("reboot")
    with pytest.raises(MigResetUnavailable, match="RESET_REQUIRED"):
        await sim.reset_gpu(0)
    sim.block_reset("in-use", "nvidia_drm")
    with pytest.raises(MigInUse, match="nvidia_drm"):
        await sim.reset_gpu(0)
    sim.block_reset(None)
    await sim.reset_gpu(0)
    assert (await sim.inventory()).gpu(0).mig_enabled
