"""GPU value types: what a GPU backend reports and every layer above it reads.

Base types of the whole agent (the lowest layer): no I/O, no imports from the rest of nodeagent but the link
topology's base types (``model/topology.py``).
Every value type is frozen: an Inventory or a Sample is a snapshot that can be handed to other tasks
without copying.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property

from nodeagent.model.topology import GpuEnds, GpuLinks, Topology, topology_of


class Reading(StrEnum):
    """A quantity the GPU backends can read. Units are in the name; absent means not supported.

    The metrics subsystem maps dcgm-exporter field names onto these; the backends implement each one
    (the NVML backend with the cheapest NVML call that gives it).
    """

    SM_CLOCK_MHZ = "sm_clock_mhz"
    MEM_CLOCK_MHZ = "mem_clock_mhz"
    GPU_TEMP_C = "gpu_temp_c"
    MEMORY_TEMP_C = "memory_temp_c"
    POWER_W = "power_w"
    POWER_LIMIT_W = "power_limit_w"
    TOTAL_ENERGY_MJ = "total_energy_mj"
    PCIE_REPLAY_COUNT = "pcie_replay_count"
    GPU_UTIL_PCT = "gpu_util_pct"
    MEM_COPY_UTIL_PCT = "mem_copy_util_pct"
    ENC_UTIL_PCT = "enc_util_pct"
    DEC_UTIL_PCT = "dec_util_pct"
    FB_FREE_MIB = "fb_free_mib"
    FB_USED_MIB = "fb_used_mib"
    FB_RESERVED_MIB = "fb_reserved_mib"
    FB_TOTAL_MIB = "fb_total_mib"
    NVLINK_BANDWIDTH_TOTAL = "nvlink_bandwidth_total"
    """DCGM's DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL: MB/s of NVLink data (rx + tx, all links) since the previous
    reading, from NVML's cumulative NVLINK_THROUGHPUT_DATA_RX/TX counters (0 on the first reading)."""
    VGPU_LICENSE_STATUS = "vgpu_license_status"
    UNCORRECTABLE_REMAPPED_ROWS = "uncorrectable_remapped_rows"
    CORRECTABLE_REMAPPED_ROWS = "correctable_remapped_rows"
    ROW_REMAP_FAILURE = "row_remap_failure"
    ECC_SBE_VOL_TOTAL = "ecc_sbe_vol_total"
    ECC_DBE_VOL_TOTAL = "ecc_dbe_vol_total"
    ECC_SBE_AGG_TOTAL = "ecc_sbe_agg_total"
    ECC_DBE_AGG_TOTAL = "ecc_dbe_agg_total"
    RETIRED_SBE = "retired_sbe"
    RETIRED_DBE = "retired_dbe"
    RETIRED_PENDING = "retired_pending"
    POWER_VIOLATION_NS = "power_violation_ns"
    THERMAL_VIOLATION_NS = "thermal_violation_ns"
    SYNC_BOOST_VIOLATION_NS = "sync_boost_violation_ns"
    BOARD_LIMIT_VIOLATION_NS = "board_limit_violation_ns"
    LOW_UTIL_VIOLATION_NS = "low_util_violation_ns"
    RELIABILITY_VIOLATION_NS = "reliability_violation_ns"
    FAN_SPEED_PCT = "fan_speed_pct"
    PSTATE = "pstate"
    PCIE_TX_THROUGHPUT_KBS = "pcie_tx_throughput_kbs"
    PCIE_RX_THROUGHPUT_KBS = "pcie_rx_throughput_kbs"
    CLOCK_EVENT_REASONS = "clock_event_reasons"
    """Bitmask of why the clocks are held down now (NVML clocks event reasons, DCGM's bit values)."""
    NVLINK_CRC_FLIT_ERRORS = "nvlink_crc_flit_errors"
    NVLINK_CRC_DATA_ERRORS = "nvlink_crc_data_errors"
    NVLINK_REPLAY_ERRORS = "nvlink_replay_errors"
    NVLINK_RECOVERY_ERRORS = "nvlink_recovery_errors"
    # GPM (Hopper and later): ratios 0..1 and byte rates, per GPU and per MIG instance.
    GR_ENGINE_ACTIVE = "gr_engine_active"
    SM_ACTIVE = "sm_active"
    SM_OCCUPANCY = "sm_occupancy"
    PIPE_TENSOR_ACTIVE = "pipe_tensor_active"
    PIPE_FP64_ACTIVE = "pipe_fp64_active"
    PIPE_FP32_ACTIVE = "pipe_fp32_active"
    PIPE_FP16_ACTIVE = "pipe_fp16_active"
    DRAM_ACTIVE = "dram_active"
    PCIE_TX_BYTES = "pcie_tx_bytes"
    PCIE_RX_BYTES = "pcie_rx_bytes"


GPM_READINGS: frozenset[Reading] = frozenset(
    {
        Reading.GR_ENGINE_ACTIVE,
        Reading.SM_ACTIVE,
        Reading.SM_OCCUPANCY,
        Reading.PIPE_TENSOR_ACTIVE,
        Reading.PIPE_FP64_ACTIVE,
        Reading.PIPE_FP32_ACTIVE,
        Reading.PIPE_FP16_ACTIVE,
        Reading.DRAM_ACTIVE,
        Reading.PCIE_TX_BYTES,
        Reading.PCIE_RX_BYTES,
    }
)
"""Readings that come from GPM samples (two samples one interval apart)."""

NVLINK_ERROR_READINGS: frozenset[Reading] = frozenset(
    {
        Reading.NVLINK_CRC_FLIT_ERRORS,
        Reading.NVLINK_CRC_DATA_ERRORS,
        Reading.NVLINK_REPLAY_ERRORS,
        Reading.NVLINK_RECOVERY_ERRORS,
    }
)
"""NVLink error counters summed over all links (NVML field values *_ERROR_COUNT_TOTAL)."""

MIG_READINGS: frozenset[Reading] = GPM_READINGS - {Reading.PCIE_TX_BYTES, Reading.PCIE_RX_BYTES} | {
    Reading.FB_FREE_MIB,
    Reading.FB_USED_MIB,
    Reading.FB_TOTAL_MIB,
    Reading.FB_RESERVED_MIB,
}
"""Readings that also exist per MIG instance."""


class GpuHealthState(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    """A call hung or failed repeatedly; readings may be partial."""
    LOST = "lost"
    """NVML says the GPU fell off the bus (NVML_ERROR_GPU_IS_LOST)."""


@dataclass(frozen=True)
class MigProfile:
    """A GPU-instance profile, e.g. 1g.10gb (id 19), with its placements in memory slices."""

    name: str
    profile_id: int
    slices: int
    """Memory slices the instance occupies (size of a placement)."""
    starts: tuple[int, ...]
    """Allowed start slices."""
    memory_mib: int
    compute_slices: int
    max_count: int
    media_extensions: bool = False


@dataclass(frozen=True)
class MigDevice:
    """One MIG instance (GPU instance + compute instance) on a parent GPU."""

    uuid: str
    gpu_index: int
    mig_index: int
    """Index among the parent's MIG devices, as in CDI names ``<gpu>:<mig index>``."""
    gpu_instance_id: int
    compute_instance_id: int
    profile: str
    placement_start: int
    placement_size: int
    memory_total_mib: int
    compute_start: int = 0
    """Start of its compute instance inside the GPU instance, in compute slices (``profile`` says how many:
    ``1c.3g.40gb`` one of a 3g.40gb; a GPU-instance name, all of them)."""


@dataclass(frozen=True)
class GpuInfo:
    """Static facts about one GPU: what labels, CDI, inventory listings and metric labels need."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str
    """NVML form, e.g. 00000000:18:00.0."""
    pci_device_id: int
    """PCI device id, e.g. 0x2330 for H100 SXM5 80GB."""
    pci_subsystem_id: int
    minor_number: int
    memory_total_mib: int
    compute_capability: tuple[int, int]
    architecture: str
    brand: str
    serial: str
    vbios_version: str
    mig_capable: bool
    mig_enabled: bool
    """Current MIG mode."""
    mig_pending: bool
    """Pending MIG mode (applies after a GPU reset)."""
    mig_devices: tuple[MigDevice, ...] = ()
    health: GpuHealthState = GpuHealthState.OK
    health_reason: str = ""
    gpm_supported: bool = False
    """Whether NVML's GPM (the profiling metrics, Hopper and newer) works on this GPU."""
    numa_node: int | None = None
    """The NUMA node the GPU is attached to (the device plugin's topology); None when unknown."""
    links: GpuLinks | None = None
    """Its PCIe common ancestors with the other GPUs and its NVLinks (``Inventory.topology`` pairs them up);
    None when not read."""

    @property
    def device_name(self) -> str:
        """dcgm-exporter's ``device`` label: nvidia<GPU index> (its collectors use the index, not the minor)."""
        return f"nvidia{self.index}"


@dataclass(frozen=True)
class Inventory:
    """The GPUs of a node and the driver behind them, as one snapshot."""

    backend: str
    """``nvml`` or ``sim``."""
    driver_version: str
    nvml_version: str
    cuda_driver_version: int
    """e.g. 13000 for CUDA 13.0, as nvmlSystemGetCudaDriverVersion returns it."""
    gpus: tuple[GpuInfo, ...] = ()
    mig_profiles: Mapping[str, tuple[MigProfile, ...]] = field(default_factory=dict)
    """GPU name → the GPU-instance profiles it supports."""

    @cached_property
    def topology(self) -> Topology:
        """GPU pairs: their PCIe common ancestor and the NVLinks between them, from each GPU's ``links``."""
        return topology_of(GpuEnds(g.index, g.pci_bus_id, g.links) for g in self.gpus)

    def gpu(self, index: int) -> GpuInfo:
        for g in self.gpus:
            if g.index == index:
                return g
        raise KeyError(index)

    def split(self, names: Collection[str]) -> tuple[Inventory, Inventory]:
        """(the GPUs ``names`` name, the others), each as an inventory; ``names``: indexes as text, or UUIDs."""
        named = tuple(g for g in self.gpus if str(g.index) in names or g.uuid in names)
        rest = tuple(g for g in self.gpus if g not in named)
        return replace(self, gpus=named), replace(self, gpus=rest)


@dataclass(frozen=True)
class XidEvent:
    gpu_index: int
    gpu_uuid: str
    xid: int
    timestamp: float
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None


@dataclass(frozen=True)
class SampleRequest:
    """What one sweep should read. Everything happens in one hop to the backend's worker thread."""

    readings: frozenset[Reading]
    include_mig: bool = True
    skip_gpus: frozenset[int] = frozenset()
    """GPUs not to touch in this sweep (sampling paused while MIG reconfigures them)."""


MigKey = tuple[int, int]
"""(gpu index, GPU-instance id): the key dcgm-exporter uses for MIG series."""


@dataclass(frozen=True)
class Sample:
    """Values read in one sweep. A reading missing from a GPU's mapping is not supported there."""

    taken_at: float
    """time.time() at the start of the sweep."""
    gpus: Mapping[int, Mapping[Reading, float]]
    mig: Mapping[MigKey, Mapping[Reading, float]] = field(default_factory=dict)
    xids: tuple[XidEvent, ...] = ()
    """XID events seen since the previous sweep."""
    failures: Mapping[str, int] = field(default_factory=dict)
    """NVML call name → failures in this sweep (timeouts and errors other than NotSupported)."""
    health: Mapping[int, GpuHealthState] = field(default_factory=dict)
    duration_s: float = 0.0
    """Wall time of the sweep on the worker thread."""
    call_seconds: float = 0.0
    """Sum of the time spent inside backend calls (NVML), for the sweep-overhead benchmark."""
