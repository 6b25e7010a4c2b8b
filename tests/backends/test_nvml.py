"""The NVML backend against a fake NVML surface injected at the pynvml boundary."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pynvml
import pytest

from nodeagent.backends.gpu.nvml.backend import NvmlBackend
from nodeagent.backends.gpu.nvml.library import find_nvml_library
from nodeagent.backends.gpu.nvml.readers import FB_READINGS
from nodeagent.errors import BackendUnavailable
from nodeagent.model.gpu import GPM_READINGS, MIG_READINGS, GpuHealthState, Reading, SampleRequest
from tests.backends.fake_nvml import FakeDevice, FakeNvml, h100_node

ALL = SampleRequest(frozenset(Reading))


class Ticker:
    """Measures how long the event loop goes without running a 1 ms ticker (the loop's responsiveness)."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - last)
            last = now

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run(), name="ticker")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


@pytest.fixture
def devices() -> Iterator[list[FakeDevice]]:
    devs = h100_node(3)
    yield devs
    for d in devs:  # let any thread blocked in a "hung" call finish
        d.release.set()


async def opened(fake: FakeNvml, **kwargs: object) -> NvmlBackend:
    backend = NvmlBackend(nvml=fake, **kwargs)  # type: ignore[arg-type]
    await backend.open()
    return backend


@pytest.fixture
async def node(devices: list[FakeDevice]) -> AsyncIterator[tuple[NvmlBackend, FakeNvml]]:
    fake = FakeNvml(devices)
    backend = await opened(fake, call_timeout_s=0.2, degraded_backoff_s=60.0)
    yield backend, fake
    await backend.close()


# ------------------------------------------------------------------------------------------ inventory


async def test_inventory_maps_the_capture(node: tuple[NvmlBackend, FakeNvml]) -> None:
    backend, _ = node
    inv = await backend.inventory()
    assert (inv.backend, inv.driver_version, inv.nvml_version, inv.cuda_driver_version) == (
        "nvml",
        "580.159.04",
        "13.580.159.04",
        13000,
    )
    g = inv.gpu(0)
    assert g.name == "NVIDIA H100 80GB HBM3"
    assert g.uuid == "GPU-07ad00dd-2cf1-3178-492d-1bffa49e50c2"
    assert g.pci_bus_id == "00000000:00:06.0"
    assert g.pci_device_id == 0x2330
    assert g.pci_subsystem_id == 0x16C110DE
    assert g.memory_total_mib == 81559
    assert g.compute_capability == (9, 0)
    assert (g.architecture, g.brand, g.serial, g.vbios_version) == (
        "Hopper",
        "NVIDIA",
        "1651524058704",
        "96.00.DA.00.0C",
    )
    assert (g.minor_number, g.device_name) == (0, "nvidia0")
    assert (g.mig_capable, g.mig_enabled, g.mig_pending, g.mig_devices) == (True, False, False, ())
    assert inv.gpu(1).pci_bus_id == "00000000:19:00.0"
    assert all(x.health == GpuHealthState.OK for x in inv.gpus)
    assert g.numa_node is None  # NotSupported: no NUMA node


async def test_the_numa_node_comes_from_nvml() -> None:
    devices = h100_node()
    devices[1].numa_node = 1
    fake = FakeNvml(devices)
    backend = await opened(fake, call_timeout_s=0.2, degraded_backoff_s=60.0)
    try:
        inv = await backend.inventory()
    finally:
        await backend.close()
    assert (inv.gpu(0).numa_node, inv.gpu(1).numa_node) == (None, 1)


async def test_gi_profiles_come_from_profile_info_and_fall_back_to_known_placements(
    node: tuple[NvmlBackend, FakeNvml],
) -> None:
    backend, _ = node
    profiles = {p.name: p for p in (await backend.inventory()).mig_profiles["NVIDIA H100 80GB HBM3"]}
    assert sorted(profiles) == ["1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]
    p = profiles["1g.20gb"]
    assert (p.profile_id, p.slices, p.starts, p.memory_mib, p.compute_slices, p.max_count) == (
        15,
        2,
        (0, 2, 4, 6),
        20096,
        1,
        4,
    )
    assert profiles["1g.10gb+me"].media_extensions and profiles["1g.10gb+me"].max_count == 1
    assert profiles["7g.80gb"].slices == 8
    assert backend.mig_details["NVIDIA H100 80GB HBM3"]["7g.80gb"]["multiprocessors"] == 132


async def test_mig_devices_and_placements_listed_by_nvml() -> None:
    devs = h100_node(2, mig_on=(1,))
    fake = FakeNvml(devs)
    backend = await opened(fake)
    try:
        inv = await backend.inventory()
        g = inv.gpu(1)
        assert g.mig_enabled and g.mig_pending
        assert [(d.mig_index, d.gpu_instance_id, d.compute_instance_id, d.profile) for d in g.mig_devices] == [
            (0, 1, 0, "3g.40gb"),
            (1, 2, 0, "3g.40gb"),
        ]
        assert [(d.placement_start, d.placement_size, d.memory_total_mib) for d in g.mig_devices] == [
            (0, 4, 40448),
            (4, 4, 40448),
        ]
        assert g.mig_devices[0].uuid.startswith("MIG-")
        # Placements as NVML lists them on a MIG-enabled GPU.
        assert fake.calls_for("nvmlDeviceGetGpuInstancePossiblePlacements") > 0
    finally:
        await backend.close()


# ------------------------------------------------------------------------------------------- readings


async def test_readings_are_mapped_with_units(node: tuple[NvmlBackend, FakeNvml]) -> None:
    backend, _ = node
    s = (await backend.sample(ALL)).gpus[0]
    assert s[Reading.FB_TOTAL_MIB] == 81559
    assert s[Reading.FB_RESERVED_MIB] == 480
    assert s[Reading.FB_FREE_MIB] == 81079
    assert s[Reading.FB_USED_MIB] == 0
    assert s[Reading.POWER_W] == pytest.approx(78.452)
    assert s[Reading.POWER_LIMIT_W] == 700.0
    assert s[Reading.TOTAL_ENERGY_MJ] == 2528108
    assert (s[Reading.GPU_TEMP_C], s[Reading.MEMORY_TEMP_C]) == (50, 52)
    assert (s[Reading.SM_CLOCK_MHZ], s[Reading.MEM_CLOCK_MHZ]) == (915, 2619)
    assert (s[Reading.GPU_UTIL_PCT], s[Reading.MEM_COPY_UTIL_PCT]) == (42, 17)
    assert (s[Reading.ENC_UTIL_PCT], s[Reading.DEC_UTIL_PCT]) == (3, 4)
    assert (s[Reading.CORRECTABLE_REMAPPED_ROWS], s[Reading.UNCORRECTABLE_REMAPPED_ROWS]) == (1, 2)
    assert s[Reading.ECC_DBE_AGG_TOTAL] == 11  # uncorrected (1) x 10 + aggregate (1)
    assert s[Reading.THERMAL_VIOLATION_NS] == 2000
    assert (s[Reading.PCIE_TX_THROUGHPUT_KBS], s[Reading.PCIE_RX_THROUGHPUT_KBS]) == (1770, 533)


async def test_not_supported_is_absent_and_not_asked_again(node: tuple[NvmlBackend, FakeNvml]) -> None:
    backend, fake = node
    first = (await backend.sample(ALL)).gpus[0]
    for r in (
        Reading.RETIRED_SBE,
        Reading.RETIRED_DBE,
        Reading.RETIRED_PENDING,
        Reading.FAN_SPEED_PCT,
        Reading.NVLINK_BANDWIDTH_TOTAL,  # a field value answered NotSupported on its own
        Reading.VGPU_LICENSE_STATUS,  # pass-through: no vGPU licence
    ):
        assert r not in first, r
    asked = fake.calls_for("nvmlDeviceGetFanSpeed")
    second = await backend.sample(ALL)
    assert Reading.FAN_SPEED_PCT not in second.gpus[0]
    assert fake.calls_for("nvmlDeviceGetFanSpeed") == asked
    assert not second.failures  # NotSupported is not a failure
    await backend.inventory()  # support may change (MIG mode): the next sweep asks again
    await backend.sample(ALL)
    assert fake.calls_for("nvmlDeviceGetFanSpeed") > asked


async def test_memory_info_v1_when_the_driver_lacks_v2(devices: list[FakeDevice]) -> None:
    fake = FakeNvml(devices)
    fake.missing.add("nvmlDeviceGetMemoryInfo_v2")
    backend = await opened(fake)
    try:
        s = (await backend.sample(SampleRequest(frozenset(FB_READINGS)))).gpus[0]
        assert Reading.FB_RESERVED_MIB not in s
        assert (s[Reading.FB_TOTAL_MIB], s[Reading.FB_USED_MIB], s[Reading.FB_FREE_MIB]) == (81559, 480, 81079)
    finally:
        await backend.close()


async def test_other_errors_are_counted_by_call_and_degrade_after_repeats(
    node: tuple[NvmlBackend, FakeNvml], devices: list[FakeDevice]
) -> None:
    backend, _ = node
    devices[1].errors["nvmlDeviceGetPowerUsage"] = pynvml.NVML_ERROR_UNKNOWN
    req = SampleRequest(frozenset({Reading.POWER_W, Reading.GPU_TEMP_C}))
    s = await backend.sample(req)
    assert s.failures == {"nvmlDeviceGetPowerUsage": 1}
    assert Reading.POWER_W not in s.gpus[1] and s.gpus[1][Reading.GPU_TEMP_C] == 50
    assert s.health[1] == GpuHealthState.OK
    await backend.sample(req)
    s = await backend.sample(req)
    assert s.health[1] == GpuHealthState.DEGRADED
    assert s.gpus[1][Reading.GPU_TEMP_C] == 50  # still read: only a hang makes it skipped
    del devices[1].errors["nvmlDeviceGetPowerUsage"]
    s = await backend.sample(req)
    assert s.health[1] == GpuHealthState.OK


# -------------------------------------------------------------------------------------------------- GPM


async def test_gpm_needs_two_samples_and_keeps_the_previous_one(node: tuple[NvmlBackend, FakeNvml]) -> None:
    backend, fake = node
    req = SampleRequest(frozenset(GPM_READINGS))
    first = await backend.sample(req)
    assert all(not (set(v) & GPM_READINGS) for v in first.gpus.values())
    assert fake.calls_for("nvmlGpmMetricsGet") == 0
    second = (await backend.sample(req)).gpus[0]
    assert second[Reading.GR_ENGINE_ACTIVE] == pytest.approx(0.5)
    assert second[Reading.SM_ACTIVE] == pytest.approx(0.4)
    assert second[Reading.PIPE_TENSOR_ACTIVE] == pytest.approx(0.1)
    assert second[Reading.DRAM_ACTIVE] == pytest.approx(0.3)
    assert second[Reading.PCIE_TX_BYTES] == pytest.approx(2 * 1024 * 1024)
    third = (await backend.sample(req)).gpus[0]  # the fake asserts sample1 is older than sample2
    assert third[Reading.PCIE_RX_BYTES] == pytest.approx(3 * 1024 * 1024)
    assert fake.calls_for("nvmlGpmSampleAlloc") == 2 * 3  # two buffers per GPU, reused


async def test_gpm_per_mig_instance_and_absent_without_support() -> None:
    devs = h100_node(2, mig_on=(0,))
    devs[1].gpm_supported = False
    fake = FakeNvml(devs)
    backend = await opened(fake)
    try:
        req = SampleRequest(frozenset(MIG_READINGS | GPM_READINGS))
        await backend.sample(req)
        s = await backend.sample(req)
        assert set(s.mig) == {(0, 1), (0, 2)}
        mig = s.mig[(0, 1)]
        assert mig[Reading.GR_ENGINE_ACTIVE] == pytest.approx(0.25)
        assert (mig[Reading.FB_TOTAL_MIB], mig[Reading.FB_USED_MIB], mig[Reading.FB_FREE_MIB]) == (40448, 100, 40328)
        assert mig[Reading.FB_RESERVED_MIB] == 20, "memory info v2 on the MIG device, as DCGM reads it"
        assert set(mig) == MIG_READINGS
        assert Reading.GPU_UTIL_PCT not in s.gpus[0]  # NotSupported on a MIG-enabled GPU
        assert not set(s.gpus[1]) & GPM_READINGS
        assert "nvmlGpmSampleGet" in fake.calls and fake.calls_for("nvmlGpmMigSampleGet") == 4
    finally:
        await backend.close()
    assert all(x.freed for x in fake.samples)


async def test_nvlink_bandwidth_is_dcgms_rate_of_the_throughput_counters() -> None:
    """DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL: NVLINK_THROUGHPUT_DATA_RX + TX (KiB, scope all links), the
    difference per second / 1000, 0 first (DCGM's DcgmCacheManager.cpp, ReadAndCacheNvLinkBandwidth)."""
    devs = h100_node(1)
    rx, tx = pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX
    devs[0].field_not_supported -= {rx, tx}
    devs[0].nvlink_kib = {rx: 1_000_000, tx: 2_000_000}
    now = [100.0]
    fake = FakeNvml(devs)
    backend = await opened(fake, monotonic=lambda: now[0])
    try:
        req = SampleRequest(frozenset({Reading.NVLINK_BANDWIDTH_TOTAL}))
        assert (await backend.sample(req)).gpus[0][Reading.NVLINK_BANDWIDTH_TOTAL] == 0
        assert fake.field_requests[-1] == [(rx, 0xFFFFFFFF), (tx, 0xFFFFFFFF)]
        devs[0].nvlink_kib = {rx: 1_000_000 + 300_000, tx: 2_000_000 + 300_000}
        now[0] += 10.0
        assert (await backend.sample(req)).gpus[0][Reading.NVLINK_BANDWIDTH_TOTAL] == 60  # 600000 KiB / 10 s / 1000
    finally:
        await backend.close()


async def test_inventory_says_whether_gpm_works() -> None:
    devs = h100_node(2)
    devs[1].gpm_supported = False
    backend = await opened(FakeNvml(devs))
    try:
        assert [g.gpm_supported for g in (await backend.inventory()).gpus] == [True, False]
    finally:
        await backend.close()


# ------------------------------------------------------------------------------------------------ faults


async def test_hung_call_degrades_that_gpu_without_blocking_the_loop(
    node: tuple[NvmlBackend, FakeNvml], devices: list[FakeDevice]
) -> None:
    backend, fake = node
    devices[1].hang_on = "nvmlDeviceGetTemperature"
    req = SampleRequest(frozenset({Reading.GPU_TEMP_C, Reading.POWER_W}))
    async with Ticker() as ticker:
        start = time.perf_counter()
        s = await backend.sample(req)
        took = time.perf_counter() - start
    assert set(s.gpus) == {0, 2}  # the GPUs after the hung one are still read
    assert s.health == {0: GpuHealthState.OK, 1: GpuHealthState.DEGRADED, 2: GpuHealthState.OK}
    assert s.failures == {"nvmlDeviceGetTemperature": 1}
    assert 0.2 <= took < 1.5
    assert ticker.max_gap < 0.1, f"loop blocked for {ticker.max_gap:.3f}s"
    inv = await backend.inventory()
    assert inv.gpu(1).health == GpuHealthState.DEGRADED
    assert "nvmlDeviceGetTemperature did not return within 0.2s" in inv.gpu(1).health_reason
    # During the backoff the GPU is skipped: no call reaches it, and the sweep is fast again.
    before = fake.calls_for("nvmlDeviceGetPowerUsage")
    start = time.perf_counter()
    s = await backend.sample(req)
    assert time.perf_counter() - start < 0.15
    assert set(s.gpus) == {0, 2} and s.health[1] == GpuHealthState.DEGRADED
    assert fake.calls_for("nvmlDeviceGetPowerUsage") == before + 2


async def test_hung_gpu_recovers_after_its_backoff(devices: list[FakeDevice]) -> None:
    fake = FakeNvml(devices)
    clock = [0.0]
    backend = await opened(fake, call_timeout_s=0.1, degraded_backoff_s=30.0, monotonic=lambda: clock[0])
    try:
        devices[0].hang_on = "nvmlDeviceGetPowerUsage"
        req = SampleRequest(frozenset({Reading.POWER_W}))
        assert (await backend.sample(req)).health[0] == GpuHealthState.DEGRADED
        devices[0].hang_on = ""
        devices[0].release.set()
        clock[0] = 29.0
        assert 0 not in (await backend.sample(req)).gpus
        clock[0] = 31.0
        s = await backend.sample(req)
        assert s.health[0] == GpuHealthState.OK and s.gpus[0][Reading.POWER_W] == pytest.approx(78.452)
    finally:
        await backend.close()


async def test_lost_gpu(node: tuple[NvmlBackend, FakeNvml], devices: list[FakeDevice]) -> None:
    backend, _ = node
    devices[2].lost = True
    s = await backend.sample(ALL)
    assert s.health[2] == GpuHealthState.LOST
    assert 2 not in s.gpus and set(s.gpus) == {0, 1}
    assert not s.failures
    inv = await backend.inventory()
    assert inv.gpu(2).health == GpuHealthState.LOST
    assert inv.gpu(2).uuid == devices[2].uuid  # what we knew before it fell off the bus
    assert "GPU is lost" in inv.gpu(2).health_reason


async def test_xid_events_are_polled_into_the_sample(
    node: tuple[NvmlBackend, FakeNvml], devices: list[FakeDevice]
) -> None:
    backend, fake = node
    fake.xid(devices[1], 79)
    fake.xid(devices[0], 31, gi=7, ci=0)
    s = await backend.sample(SampleRequest(frozenset({Reading.GPU_TEMP_C})))
    assert [(e.gpu_index, e.gpu_uuid, e.xid, e.gpu_instance_id, e.compute_instance_id) for e in s.xids] == [
        (1, devices[1].uuid, 79, None, None),
        (0, devices[0].uuid, 31, 7, 0),
    ]
    assert (await backend.sample(SampleRequest(frozenset()))).xids == ()


async def test_a_watched_xid_is_pushed_from_the_event_wait_not_the_sweep(
    node: tuple[NvmlBackend, FakeNvml], devices: list[FakeDevice]
) -> None:
    """nvmlEventSetWait blocks on a thread of its own; the XID reaches the bus while no sweep runs."""
    from nodeagent import events
    from nodeagent.events import EventBus
    from nodeagent.gpustate import GpuState

    backend, fake = node
    bus = EventBus()
    state = GpuState(backend, bus)
    stop = asyncio.Event()
    async with bus.subscribe(events.XID) as sub:
        task = asyncio.create_task(state.run(stop))  # nothing registered: no sweep at all
        await state.started.wait()
        fake.xid(devices[2], 79)
        event = await asyncio.wait_for(sub.get(), 5)
        assert (event.payload.gpu_index, event.payload.gpu_uuid, event.payload.xid) == (2, devices[2].uuid, 79)
        assert fake.waits >= 1, "it waited rather than polled"
        fake.xid(devices[0], 48)
        assert (await asyncio.wait_for(sub.get(), 5)).payload.xid == 48
        assert (await backend.sample(SampleRequest(frozenset()))).xids == (), "a watched set is not drained by sweeps"
        stop.set()
        await asyncio.wait_for(task, 5)
    await backend.close()
    assert not any(t.name == "nvml-events" and t.is_alive() for t in threading.enumerate()), "closing ends the wait"


async def test_call_seconds_and_duration(node: tuple[NvmlBackend, FakeNvml]) -> None:
    backend, _ = node
    s = await backend.sample(ALL)
    assert 0 < s.call_seconds <= s.duration_s


# ------------------------------------------------------------------------------------------ open errors


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, ["NVIDIA driver not found", "driver.root", "--simulate"]),
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, ["version mismatch", "kernel module", "Reboot"]),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, ["kernel module is not loaded", "modprobe"]),
        (pynvml.NVML_ERROR_NO_PERMISSION, ["no permission", "/dev/nvidiactl"]),
    ],
)
async def test_init_errors_become_clear_reasons(code: int, words: list[str], tmp_path: Path) -> None:
    fake = FakeNvml(h100_node(1), init_errors=[code])
    backend = NvmlBackend(nvml=fake, fallback_roots=(str(tmp_path / "none"),))
    with pytest.raises(BackendUnavailable) as info:
        await backend.open()
    await backend.close()
    for w in words:
        assert w in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback


async def test_init_hang_is_unavailable_not_a_hang(devices: list[FakeDevice]) -> None:
    fake = FakeNvml(devices)
    gate = devices[0].release

    def hung_init() -> None:
        gate.wait()

    fake.nvmlInit = hung_init  # type: ignore[method-assign]
    backend = NvmlBackend(nvml=fake, call_timeout_s=0.05)
    with pytest.raises(BackendUnavailable, match="did not answer"):
        await backend.open()
    await backend.close()


def _driver_tree(root: Path, folder: str) -> Path:
    lib = root / folder
    lib.mkdir(parents=True)
    real = lib / "libnvidia-ml.so.580.159.04"
    real.write_bytes(b"\x7fELF")
    (lib / "libnvidia-ml.so.1").symlink_to(real.name)
    return real


@pytest.mark.parametrize("folder", ["lib64", "lib/x86_64-linux-gnu", "usr/lib64", "usr/lib/x86_64-linux-gnu"])
async def test_driver_root_loads_the_library_from_there(tmp_path: Path, folder: str) -> None:
    real = _driver_tree(tmp_path / "nvidia", folder)
    loaded: list[str] = []
    fake = FakeNvml(h100_node(1))
    backend = NvmlBackend(
        nvml=fake, driver_root=str(tmp_path / "nvidia"), load_library=lambda p: loaded.append(p) or object()
    )
    await backend.open()
    await backend.close()
    assert loaded == [str(real)]
    assert fake.nvmlLib is not None and backend.library_path == str(real)


def test_library_search_order_and_links_stay_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "drv"
    _driver_tree(root, "usr/lib64")
    first = _driver_tree(root, "lib64")
    assert find_nvml_library(str(root)) == first
    # An absolute link resolves inside the driver root (as the runtime sees it), never on this host.
    other = tmp_path / "abs"
    (other / "lib64").mkdir(parents=True)
    (other / "usr/lib").mkdir(parents=True)
    (other / "usr/lib/libnvidia-ml.so.580").write_bytes(b"x")
    (other / "lib64/libnvidia-ml.so.1").symlink_to("/usr/lib/libnvidia-ml.so.580")
    assert find_nvml_library(str(other)) == other / "usr/lib/libnvidia-ml.so.580"
    assert find_nvml_library(str(tmp_path / "empty")) is None


async def test_driver_root_without_library_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "lib64").mkdir()
    backend = NvmlBackend(nvml=FakeNvml(h100_node(1)), driver_root=str(tmp_path))
    with pytest.raises(BackendUnavailable, match=r"no libnvidia-ml\.so\.1 under the driver root"):
        await backend.open()
    await backend.close()


async def test_library_that_fails_to_load(tmp_path: Path) -> None:
    _driver_tree(tmp_path, "lib64")

    def broken(path: str) -> object:
        raise OSError(f"{path}: wrong ELF class: ELFCLASS32")

    backend = NvmlBackend(nvml=FakeNvml(h100_node(1)), driver_root=str(tmp_path), load_library=broken)
    with pytest.raises(BackendUnavailable, match="wrong ELF class"):
        await backend.open()
    await backend.close()


async def test_well_known_driver_roots_are_tried_when_the_system_loader_fails(tmp_path: Path) -> None:
    real = _driver_tree(tmp_path / "usr/local/nvidia", "lib64")
    loaded: list[str] = []
    fake = FakeNvml(h100_node(1), init_errors=[pynvml.NVML_ERROR_LIBRARY_NOT_FOUND])
    backend = NvmlBackend(
        nvml=fake,
        load_library=lambda p: loaded.append(p) or object(),
        fallback_roots=(str(tmp_path / "run"), str(tmp_path / "usr/local/nvidia")),
    )
    await backend.open()
    await backend.close()
    assert loaded == [str(real)] and fake.calls_for("nvmlInit") == 2


async def test_close_is_idempotent_and_shuts_nvml_down(node: tuple[NvmlBackend, FakeNvml]) -> None:
    backend, fake = node
    await backend.close()
    await backend.close()
    assert fake.shutdowns == 1


async def test_repeated_inventories_keep_a_healthy_gpu_ok(node: tuple[NvmlBackend, FakeNvml]) -> None:
    backend, _ = node
    for _ in range(4):
        inv = await backend.inventory()
    assert all(g.health == GpuHealthState.OK for g in inv.gpus)
