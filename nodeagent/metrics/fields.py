"""The field table: dcgm-exporter field names mapped onto the readings our GPU backends provide.

Names, Prometheus types and units are dcgm-exporter's (telemetry-labels-mig.md §1.1), so dashboards and
alerts built for it keep working. Each field says where its value comes from (a backend Reading, the
last XID, or a static fact that becomes a label) and how it appears on MIG instance series:

- ``DEVICE``: a whole-GPU quantity (temperature, power, clocks); dcgm-exporter reports a GPU instance
  with its parent's value, and so do we;
- ``INSTANCE``: read per GPU and per MIG instance (framebuffer, GPM activity); absent on an instance
  the backend does not report it for;
- ``GPU_ONLY``: NVML's utilisation rates cover the whole GPU only; on an instance series they would
  misattribute the parent's load, so they are not emitted for MIG instances (dcgm-exporter does not
  report GPU_UTIL for them either).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from nodeagent.metrics.tiers import Tier, tier_of
from nodeagent.model.gpu import GPM_READINGS, GpuInfo, Inventory, Reading


class Kind(StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"
    LABEL = "label"
    """Not a series: attached as a label to every series of the GPU."""


class Scope(StrEnum):
    DEVICE = "device"
    INSTANCE = "instance"
    GPU_ONLY = "gpu-only"


class Source(StrEnum):
    READING = "reading"
    XID = "xid"
    """The most recent XID seen on the GPU (0 when none yet)."""
    STATIC = "static"
    """A fact from the inventory (driver version, serial): label fields only."""


StaticValue = Callable[[Inventory, GpuInfo], str]


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: Kind
    help: str
    source: Source
    reading: Reading | None = None
    scale: float = 1.0
    """Multiplier from the Reading's unit to dcgm-exporter's (e.g. ns → us is 1e-3)."""
    scope: Scope = Scope.DEVICE
    static: StaticValue | None = None

    @property
    def tier(self) -> Tier:
        """GPM samples cost ~7 ms per GPU on an H100 (design.md), so they join the slow tier."""
        if self.reading is None:
            return Tier.FAST
        if self.reading in GPM_READINGS:
            return Tier.SLOW
        return tier_of(self.reading)


def _r(
    name: str, kind: Kind, help_: str, reading: Reading, *, scope: Scope = Scope.DEVICE, scale: float = 1.0
) -> FieldSpec:
    return FieldSpec(name, kind, help_, Source.READING, reading, scale, scope)


def _label(name: str, help_: str, value: StaticValue) -> FieldSpec:
    return FieldSpec(name, Kind.LABEL, help_, Source.STATIC, static=value)


G, C = Kind.GAUGE, Kind.COUNTER
INST, GPU_ONLY = Scope.INSTANCE, Scope.GPU_ONLY

FIELDS: dict[str, FieldSpec] = {
    f.name: f
    for f in (
        _r("DCGM_FI_DEV_SM_CLOCK", G, "SM clock frequency (MHz).", Reading.SM_CLOCK_MHZ),
        _r("DCGM_FI_DEV_MEM_CLOCK", G, "Memory clock frequency (MHz).", Reading.MEM_CLOCK_MHZ),
        _r("DCGM_FI_DEV_MEMORY_TEMP", G, "Memory temperature (C).", Reading.MEMORY_TEMP_C),
        _r("DCGM_FI_DEV_GPU_TEMP", G, "GPU temperature (C).", Reading.GPU_TEMP_C),
        _r("DCGM_FI_DEV_POWER_USAGE", G, "Power draw (W).", Reading.POWER_W),
        _r("DCGM_FI_DEV_POWER_MGMT_LIMIT", G, "Power management limit (W).", Reading.POWER_LIMIT_W),
        _r("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", C, "Energy used since boot (mJ).", Reading.TOTAL_ENERGY_MJ),
        _r("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", C, "PCIe replays (retries).", Reading.PCIE_REPLAY_COUNT),
        _r("DCGM_FI_DEV_PCIE_TX_THROUGHPUT", C, "PCIe TX throughput (KB/s).", Reading.PCIE_TX_THROUGHPUT_KBS),
        _r("DCGM_FI_DEV_PCIE_RX_THROUGHPUT", C, "PCIe RX throughput (KB/s).", Reading.PCIE_RX_THROUGHPUT_KBS),
        _r("DCGM_FI_DEV_GPU_UTIL", G, "GPU utilization (%).", Reading.GPU_UTIL_PCT, scope=GPU_ONLY),
        _r("DCGM_FI_DEV_MEM_COPY_UTIL", G, "Memory copy utilization (%).", Reading.MEM_COPY_UTIL_PCT, scope=GPU_ONLY),
        _r("DCGM_FI_DEV_ENC_UTIL", G, "Encoder utilization (%).", Reading.ENC_UTIL_PCT, scope=GPU_ONLY),
        _r("DCGM_FI_DEV_DEC_UTIL", G, "Decoder utilization (%).", Reading.DEC_UTIL_PCT, scope=GPU_ONLY),
        FieldSpec("DCGM_FI_DEV_XID_ERRORS", G, "Value of the most recent XID error (0: none).", Source.XID),
        _r("DCGM_FI_DEV_POWER_VIOLATION", C, "Throttled for power (us).", Reading.POWER_VIOLATION_NS, scale=1e-3),
        _r("DCGM_FI_DEV_THERMAL_VIOLATION", C, "Throttled for heat (us).", Reading.THERMAL_VIOLATION_NS, scale=1e-3),
        _r(
            "DCGM_FI_DEV_SYNC_BOOST_VIOLATION",
            C,
            "Throttled for sync boost (us).",
            Reading.SYNC_BOOST_VIOLATION_NS,
            scale=1e-3,
        ),
        _r(
            "DCGM_FI_DEV_BOARD_LIMIT_VIOLATION",
            C,
            "Throttled for the board limit (us).",
            Reading.BOARD_LIMIT_VIOLATION_NS,
            scale=1e-3,
        ),
        _r(
            "DCGM_FI_DEV_LOW_UTIL_VIOLATION",
            C,
            "Throttled for low utilization (us).",
            Reading.LOW_UTIL_VIOLATION_NS,
            scale=1e-3,
        ),
        _r(
            "DCGM_FI_DEV_RELIABILITY_VIOLATION",
            C,
            "Throttled for reliability (us).",
            Reading.RELIABILITY_VIOLATION_NS,
            scale=1e-3,
        ),
        _r("DCGM_FI_DEV_FB_FREE", G, "Framebuffer memory free (MiB).", Reading.FB_FREE_MIB, scope=INST),
        _r("DCGM_FI_DEV_FB_USED", G, "Framebuffer memory used (MiB).", Reading.FB_USED_MIB, scope=INST),
        _r("DCGM_FI_DEV_FB_RESERVED", G, "Framebuffer memory reserved (MiB).", Reading.FB_RESERVED_MIB, scope=INST),
        _r("DCGM_FI_DEV_FB_TOTAL", G, "Framebuffer memory total (MiB).", Reading.FB_TOTAL_MIB, scope=INST),
        _r("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", C, "Single-bit volatile ECC errors.", Reading.ECC_SBE_VOL_TOTAL),
        _r("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", C, "Double-bit volatile ECC errors.", Reading.ECC_DBE_VOL_TOTAL),
        _r("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", C, "Single-bit persistent ECC errors.", Reading.ECC_SBE_AGG_TOTAL),
        _r("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", C, "Double-bit persistent ECC errors.", Reading.ECC_DBE_AGG_TOTAL),
        _r("DCGM_FI_DEV_RETIRED_SBE", C, "Pages retired for single-bit errors.", Reading.RETIRED_SBE),
        _r("DCGM_FI_DEV_RETIRED_DBE", C, "Pages retired for double-bit errors.", Reading.RETIRED_DBE),
        _r("DCGM_FI_DEV_RETIRED_PENDING", C, "Pages pending retirement.", Reading.RETIRED_PENDING),
        _r(
            "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
            C,
            "NVLink bandwidth counter summed over all lanes.",
            Reading.NVLINK_BANDWIDTH_TOTAL,
        ),
        _r("DCGM_FI_DEV_VGPU_LICENSE_STATUS", G, "vGPU license status.", Reading.VGPU_LICENSE_STATUS),
        _r(
            "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
            C,
            "Rows remapped for uncorrectable errors.",
            Reading.UNCORRECTABLE_REMAPPED_ROWS,
        ),
        _r(
            "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
            C,
            "Rows remapped for correctable errors.",
            Reading.CORRECTABLE_REMAPPED_ROWS,
        ),
        _r("DCGM_FI_DEV_ROW_REMAP_FAILURE", G, "1 if row remapping failed.", Reading.ROW_REMAP_FAILURE),
        _r("DCGM_FI_DEV_FAN_SPEED", G, "Fan speed (%).", Reading.FAN_SPEED_PCT),
        _r("DCGM_FI_DEV_PSTATE", G, "Performance state, 0 (highest) to 15.", Reading.PSTATE),
        _r(
            "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
            G,
            "Ratio of time the graphics/compute engine was active.",
            Reading.GR_ENGINE_ACTIVE,
            scope=INST,
        ),
        _r("DCGM_FI_PROF_SM_ACTIVE", G, "Ratio of cycles an SM had a warp.", Reading.SM_ACTIVE, scope=INST),
        _r("DCGM_FI_PROF_SM_OCCUPANCY", G, "Ratio of resident warps to the maximum.", Reading.SM_OCCUPANCY, scope=INST),
        _r(
            "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
            G,
            "Ratio of cycles the tensor pipe was active.",
            Reading.PIPE_TENSOR_ACTIVE,
            scope=INST,
        ),
        _r(
            "DCGM_FI_PROF_PIPE_FP64_ACTIVE",
            G,
            "Ratio of cycles the FP64 pipe was active.",
            Reading.PIPE_FP64_ACTIVE,
            scope=INST,
        ),
        _r(
            "DCGM_FI_PROF_PIPE_FP32_ACTIVE",
            G,
            "Ratio of cycles the FP32 pipe was active.",
            Reading.PIPE_FP32_ACTIVE,
            scope=INST,
        ),
        _r(
            "DCGM_FI_PROF_PIPE_FP16_ACTIVE",
            G,
            "Ratio of cycles the FP16 pipe was active.",
            Reading.PIPE_FP16_ACTIVE,
            scope=INST,
        ),
        _r(
            "DCGM_FI_PROF_DRAM_ACTIVE",
            G,
            "Ratio of cycles the memory interface was busy.",
            Reading.DRAM_ACTIVE,
            scope=INST,
        ),
        _r("DCGM_FI_PROF_PCIE_TX_BYTES", G, "PCIe TX rate incl. headers (bytes/s).", Reading.PCIE_TX_BYTES),
        _r("DCGM_FI_PROF_PCIE_RX_BYTES", G, "PCIe RX rate incl. headers (bytes/s).", Reading.PCIE_RX_BYTES),
        _label("DCGM_FI_DRIVER_VERSION", "Driver version.", lambda inv, _gpu: inv.driver_version),
        _label("DCGM_FI_NVML_VERSION", "NVML version.", lambda inv, _gpu: inv.nvml_version),
        _label("DCGM_FI_DEV_BRAND", "Device brand.", lambda _inv, gpu: gpu.brand),
        _label("DCGM_FI_DEV_SERIAL", "Device serial number.", lambda _inv, gpu: gpu.serial),
        _label("DCGM_FI_DEV_VBIOS_VERSION", "VBIOS version.", lambda _inv, gpu: gpu.vbios_version),
    )
}

KNOWN_UNSUPPORTED: frozenset[str] = frozenset(
    {
        "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
        "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL",
        "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL",
        "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL",
        "DCGM_FI_DEV_NVLINK_BANDWIDTH_L0",
        "DCGM_FI_PROF_NVLINK_TX_BYTES",
        "DCGM_FI_PROF_NVLINK_RX_BYTES",
        "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
        "DCGM_FI_DEV_SLOWDOWN_TEMP",
        "DCGM_FI_DEV_SHUTDOWN_TEMP",
        "DCGM_FI_DEV_GPU_MAX_OP_TEMP",
        "DCGM_FI_DEV_FB_USED_PERCENT",
        "DCGM_FI_DEV_INFOROM_IMAGE_VER",
        "DCGM_FI_DEV_INFOROM_OEM_VER",
        "DCGM_FI_DEV_INFOROM_ECC_VER",
        "DCGM_FI_DEV_INFOROM_POWER_VER",
        "DCGM_FI_DEV_INFOROM_CONFIG_VALID",
        "DCGM_FI_DEV_COUNT",
        "DCGM_FI_DEV_NAME",
        "DCGM_FI_DEV_UUID",
        "DCGM_FI_DEV_MINOR_NUMBER",
        "DCGM_FI_DEV_PCI_BUSID",
        "DCGM_EXP_CLOCK_EVENTS_COUNT",
        "DCGM_EXP_XID_ERRORS_COUNT",
        "DCGM_EXP_GPU_HEALTH_STATUS",
        "DCGM_EXP_P2P_STATUS",
    }
)
"""Real DCGM / dcgm-exporter names this agent does not produce: a counters CSV naming one is accepted,
with a warning, and the field is absent (the same as a field the GPU does not support)."""

DEFAULT_FIELDS: tuple[str, ...] = (
    "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_MEM_CLOCK",
    "DCGM_FI_DEV_MEMORY_TEMP",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_ENC_UTIL",
    "DCGM_FI_DEV_DEC_UTIL",
    "DCGM_FI_DEV_XID_ERRORS",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_RESERVED",
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
    "DCGM_FI_DEV_VGPU_LICENSE_STATUS",
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_ROW_REMAP_FAILURE",
    "DCGM_FI_DRIVER_VERSION",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
    "DCGM_FI_PROF_DRAM_ACTIVE",
    "DCGM_FI_PROF_PCIE_TX_BYTES",
    "DCGM_FI_PROF_PCIE_RX_BYTES",
)
"""dcgm-exporter's default set (etc/default-counters.csv, 26 enabled lines), in its order."""


@dataclass(frozen=True)
class Counter:
    """One selected field, as the counters CSV (or the default set) asks for it."""

    spec: FieldSpec
    kind: Kind
    """The type from the CSV; it may differ from the spec's (dcgm-exporter honours the file)."""
    help: str

    @property
    def name(self) -> str:
        return self.spec.name


def default_counters() -> tuple[Counter, ...]:
    return tuple(Counter(FIELDS[n], FIELDS[n].kind, FIELDS[n].help) for n in DEFAULT_FIELDS)
