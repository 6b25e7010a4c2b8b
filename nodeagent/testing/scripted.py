"""A scripted GPU backend: exact readings a test sets per GPU, for tests that check rendered values.

The simulator (``testing.sim_gpus``) follows a physical model, so its readings move; a test that compares
rendered series with expected numbers needs values it sets itself. ``ScriptedGpus`` behaves like a
GpuBackend: H100-like GPUs, optional MIG instances, readings set per GPU (a reading left out is "not
supported"), XID injection, per-call failures, health per GPU, a fixed sample time, and a log of every
SampleRequest so tests can count hops and check the sampling tiers.
"""

from __future__ import annotations

import time
from dataclasses import replace

from nodeagent.backends.gpu.sim.profiles import DEFAULT_PROFILE, GpuProfile, load_profile
from nodeagent.model.gpu import (
    GpuHealthState,
    GpuInfo,
    Inventory,
    MigDevice,
    MigKey,
    Reading,
    Sample,
    SampleRequest,
    XidEvent,
)

MODEL: GpuProfile = load_profile(DEFAULT_PROFILE)
"""The GPU model the scripted GPUs are: the built-in h100-80gb-hbm3 (nodeagent/model/gpu_models/, a real capture)."""
H100 = MODEL.name

DEFAULT_VALUES: dict[Reading, float] = {
    Reading.SM_CLOCK_MHZ: 1980,
    Reading.MEM_CLOCK_MHZ: 2619,
    Reading.GPU_TEMP_C: 50,
    Reading.MEMORY_TEMP_C: 45,
    Reading.POWER_W: 78.452,
    Reading.TOTAL_ENERGY_MJ: 2528108,
    Reading.PCIE_REPLAY_COUNT: 0,
    Reading.GPU_UTIL_PCT: 0,
    Reading.MEM_COPY_UTIL_PCT: 0,
    Reading.ENC_UTIL_PCT: 0,
    Reading.DEC_UTIL_PCT: 0,
    Reading.FB_FREE_MIB: MODEL.memory_total_mib - MODEL.memory_reserved_mib,
    Reading.FB_USED_MIB: 0,
    Reading.FB_RESERVED_MIB: MODEL.memory_reserved_mib,
    Reading.UNCORRECTABLE_REMAPPED_ROWS: 0,
    Reading.CORRECTABLE_REMAPPED_ROWS: 0,
    Reading.ROW_REMAP_FAILURE: 0,
    Reading.GR_ENGINE_ACTIVE: 0.25,
    Reading.PIPE_TENSOR_ACTIVE: 0.125,
    Reading.DRAM_ACTIVE: 0.5,
    Reading.PCIE_TX_BYTES: 1439000,
    Reading.PCIE_RX_BYTES: 2000000,
    Reading.POWER_VIOLATION_NS: 5_000_000,
}
"""Like the H100 probe: no fan, NVLink, vGPU licence or retired pages (NotSupported there)."""

MIG_VALUES: dict[Reading, float] = {
    Reading.FB_FREE_MIB: 9000,
    Reading.FB_USED_MIB: 984,
    Reading.FB_TOTAL_MIB: 9984,
    Reading.GR_ENGINE_ACTIVE: 0.75,
    Reading.DRAM_ACTIVE: 0.1,
}


def gpu_info(index: int, *, migs: int = 0) -> GpuInfo:
    """GPU ``index`` of the model in ``MODEL``, with ``migs`` 1g.10gb instances (GI 7, 8, ...)."""
    uuid = f"GPU-07ad00dd-2cf1-3178-492d-1bffa49e50{index:02x}"
    small = MODEL.mig_profile("1g.10gb")
    devices = tuple(
        MigDevice(
            uuid=f"MIG-{index:02x}{m:02x}0000-aaaa-bbbb-cccc-dddddddddddd",
            gpu_index=index,
            mig_index=m,
            gpu_instance_id=7 + m,
            compute_instance_id=0,
            profile=small.name,
            placement_start=small.starts[m],
            placement_size=small.slices,
            memory_total_mib=small.memory_mib,
        )
        for m in range(migs)
    )
    return GpuInfo(
        index=index,
        uuid=uuid,
        name=MODEL.name,
        pci_bus_id=f"00000000:{0x18 + index:02X}:00.0",
        pci_device_id=MODEL.pci_device_id,
        pci_subsystem_id=MODEL.pci_subsystem_id,
        minor_number=index,
        memory_total_mib=MODEL.memory_total_mib,
        compute_capability=MODEL.compute_capability,
        architecture=MODEL.architecture,
        brand=MODEL.brand,
        serial=f"{MODEL.serial_prefix}5240587{index:02d}"[:13],
        vbios_version=MODEL.vbios_version,
        mig_capable=MODEL.mig_capable,
        mig_enabled=migs > 0,
        mig_pending=migs > 0,
        mig_devices=devices,
        gpm_supported=MODEL.gpm_supported,
    )


class ScriptedGpus:
    kind = "fake"

    def __init__(self, count: int = 2, *, migs: int = 0, driver: str = "580.159.04") -> None:
        self.gpus = [gpu_info(i, migs=migs) for i in range(count)]
        self.driver = driver
        self.values: dict[int, dict[Reading, float]] = {i: dict(DEFAULT_VALUES) for i in range(count)}
        self.mig_values: dict[MigKey, dict[Reading, float]] = {
            (g.index, m.gpu_instance_id): dict(MIG_VALUES) for g in self.gpus for m in g.mig_devices
        }
        self.requests: list[SampleRequest] = []
        self.inventory_calls = 0
        self.pending_xids: list[XidEvent] = []
        self.failures: dict[str, int] = {}
        self.health: dict[int, GpuHealthState] = {}
        self.now: float | None = None
        """Fixed sample time for tests that need one; None: the wall clock."""

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def inventory(self) -> Inventory:
        self.inventory_calls += 1
        return Inventory("fake", self.driver, "13.580.159.04", 13000, tuple(self.gpus))

    async def sample(self, request: SampleRequest) -> Sample:
        self.requests.append(request)
        gpus = {i: {r: v for r, v in vals.items() if r in request.readings} for i, vals in self.values.items()}
        mig = (
            {k: {r: v for r, v in vals.items() if r in request.readings} for k, vals in self.mig_values.items()}
            if request.include_mig
            else {}
        )
        xids, self.pending_xids = tuple(self.pending_xids), []
        failures, self.failures = self.failures, {}
        return Sample(
            taken_at=time.time() if self.now is None else self.now,
            gpus=gpus,
            mig=mig,
            xids=xids,
            failures=failures,
            health={i: self.health.get(i, GpuHealthState.OK) for i in self.values},
            duration_s=0.001,
        )

    def inject_xid(self, gpu: int, xid: int) -> None:
        self.pending_xids.append(XidEvent(gpu, self.gpus[gpu].uuid, xid, time.time()))

    def set_migs(self, index: int, migs: int) -> None:
        self.gpus[index] = replace(gpu_info(index, migs=migs))
        for key in [k for k in self.mig_values if k[0] == index]:
            del self.mig_values[key]
        for m in self.gpus[index].mig_devices:
            self.mig_values[(index, m.gpu_instance_id)] = dict(MIG_VALUES)
