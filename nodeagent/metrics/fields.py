"""The field table: dcgm-exporter field names mapped onto the readings our GPU backends provide.

Names, Prometheus types, units and HELP texts are dcgm-exporter 4.x's (its etc/default-counters.csv),
so dashboards and alerts built for it keep working. Every name DCGM resolves (data/dcgm_fields.csv:
current names and their legacy aliases, with field ids) is known: a counters CSV may name any of them,
and a field this agent cannot serve is a warning, not an error. Each field says where its value comes
from (a backend Reading, the last XID, a window of XIDs or clock events, or a static fact that becomes
a label) and how it appears on MIG instance series:

- ``DEVICE``: a whole-GPU quantity (temperature, power, clocks, energy, encoder and decoder utilisation,
  GPM's PCIe bytes). DCGM answers these on a GPU instance with its parent GPU's value (its cache manager
  remaps GPU-level fields of a GPU_I entity to the parent GPU), so dcgm-exporter repeats the parent's
  value on every instance series; we do the same by default (``metrics.mig_whole_gpu_fields``);
- ``INSTANCE``: read per GPU and per MIG instance (framebuffer, GPM activity); absent on an instance
  the backend does not report it for;
- ``GPU_ONLY``: NVML's utilisation rates cover the whole GPU only; on an instance series they would
  misattribute the parent's load, so they are not emitted for MIG instances (dcgm-exporter does not
  report GPU_UTIL for them either).
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources

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
    XID_COUNT = "xid-count"
    """DCGM_EXP_XID_ERRORS_COUNT: XIDs seen in the last window, one series per XID value."""
    CLOCK_EVENTS_COUNT = "clock-events-count"
    """DCGM_EXP_CLOCK_EVENTS_COUNT: sweeps in the last window with each clock event bit set."""
    HEALTH = "health"
    """DCGM_EXP_GPU_HEALTH_STATUS: the node's published GPU health report, one series per GPU and watch."""


StaticValue = Callable[[Inventory, GpuInfo], str]


@dataclass(frozen=True)
class FieldSpec:
    name: str
    field_id: int
    """DCGM's field id (dcgm-exporter's own fields: its 9000+ ids)."""
    kind: Kind
    help: str
    source: Source
    reading: Reading | None = None
    scale: float = 1.0
    """Multiplier from the Reading's unit to dcgm-exporter's (1.0 for every field today: the violation
    counters are in ns in both NVML and DCGM 4.x)."""
    scope: Scope = Scope.DEVICE
    static: StaticValue | None = None
    fallback: Reading | None = None
    """Where the value comes from on a GPU without GPM (before Hopper), when NVML has the same quantity
    elsewhere; multiplied by ``fallback_scale``. Never used on a GPU that has GPM."""
    fallback_scale: float = 1.0

    @property
    def tier(self) -> Tier:
        """GPM samples cost ~7 ms per GPU on a real H100 (cheap readings: 2-10 us), so they join the slow tier."""
        if self.reading is None:
            return Tier.FAST
        if self.reading in GPM_READINGS:
            return Tier.SLOW
        return tier_of(self.reading)


def _r(
    name: str,
    kind: Kind,
    help_: str,
    reading: Reading,
    *,
    scope: Scope = Scope.DEVICE,
    scale: float = 1.0,
    fallback: Reading | None = None,
    fallback_scale: float = 1.0,
) -> FieldSpec:
    return FieldSpec(
        name, dcgm_field_id(name), kind, help_, Source.READING, reading, scale, scope, None, fallback, fallback_scale
    )


def _label(name: str, help_: str, value: StaticValue) -> FieldSpec:
    return FieldSpec(name, dcgm_field_id(name), Kind.LABEL, help_, Source.STATIC, static=value)


@functools.cache
def dcgm_names() -> dict[str, int]:
    """Every field name DCGM resolves (current and legacy) → its field id (data/dcgm_fields.csv)."""
    text = resources.files("nodeagent.metrics").joinpath("data/dcgm_fields.csv").read_text(encoding="utf-8")
    rows = csv.reader(line for line in text.splitlines() if line and not line.startswith("#"))
    return {name: int(field_id) for name, field_id, _kind in rows}


def dcgm_field_id(name: str) -> int:
    return dcgm_names()[name]


@functools.cache
def xid_messages() -> dict[int, str]:
    """XID code → dcgm-exporter's ``err_msg`` text (data/xid_messages.csv)."""
    text = resources.files("nodeagent.metrics").joinpath("data/xid_messages.csv").read_text(encoding="utf-8")
    rows = csv.reader(line for line in text.splitlines() if line and not line.startswith("#"))
    return {int(code): message for code, message in rows}


UNKNOWN_XID_MESSAGE = "Unknown Error"
XID_COUNT_ID, CLOCK_EVENTS_COUNT_ID, GPU_HEALTH_STATUS_ID, P2P_STATUS_ID = 9001, 9002, 9003, 9004
"""dcgm-exporter's ids for its own fields (internal/pkg/counters/exporter_counters.go)."""

CLOCK_EVENT_NAMES: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "clocks_setting"),
    (0x4, "power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal"),
    (0x40, "hw_thermal"),
    (0x80, "hw_power_brake"),
    (0x100, "display_clocks"),
)
"""DCGM clocks event bits and dcgm-exporter's ``clock_event`` label values (clock_events_collector.go)."""


G, C = Kind.GAUGE, Kind.COUNTER
INST, GPU_ONLY = Scope.INSTANCE, Scope.GPU_ONLY

FIELDS: dict[str, FieldSpec] = {
    f.name: f
    for f in (
        _r("DCGM_FI_DEV_SM_CLOCK", G, "SM clock frequency (in MHz).", Reading.SM_CLOCK_MHZ),
        _r("DCGM_FI_DEV_MEM_CLOCK", G, "Memory clock frequency (in MHz).", Reading.MEM_CLOCK_MHZ),
        _r("DCGM_FI_DEV_MEMORY_TEMP", G, "Memory temperature (in C).", Reading.MEMORY_TEMP_C),
        _r("DCGM_FI_DEV_GPU_TEMP", G, "GPU temperature (in C).", Reading.GPU_TEMP_C),
        _r("DCGM_FI_DEV_POWER_USAGE", G, "Power draw (in W).", Reading.POWER_W),
        _r("DCGM_FI_DEV_POWER_MGMT_LIMIT", G, "Power management limit (W).", Reading.POWER_LIMIT_W),
        _r(
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            C,
            "Total energy consumption since boot (in mJ).",
            Reading.TOTAL_ENERGY_MJ,
        ),
        _r("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", C, "Total number of PCIe retries.", Reading.PCIE_REPLAY_COUNT),
        _r("DCGM_FI_DEV_PCIE_TX_THROUGHPUT", C, "PCIe TX throughput (KB/s).", Reading.PCIE_TX_THROUGHPUT_KBS),
        _r("DCGM_FI_DEV_PCIE_RX_THROUGHPUT", C, "PCIe RX throughput (KB/s).", Reading.PCIE_RX_THROUGHPUT_KBS),
        _r("DCGM_FI_DEV_GPU_UTIL", G, "GPU utilization (in %).", Reading.GPU_UTIL_PCT, scope=GPU_ONLY),
        _r("DCGM_FI_DEV_MEM_COPY_UTIL", G, "Memory utilization (in %).", Reading.MEM_COPY_UTIL_PCT, scope=GPU_ONLY),
        # DCGM reads these from the parent GPU's handle for a GPU instance (device scope), as power.
        _r("DCGM_FI_DEV_ENC_UTIL", G, "Encoder utilization (in %).", Reading.ENC_UTIL_PCT),
        _r("DCGM_FI_DEV_DEC_UTIL", G, "Decoder utilization (in %).", Reading.DEC_UTIL_PCT),
        FieldSpec("DCGM_FI_DEV_XID_ERRORS", 230, G, "Value of the last XID error encountered.", Source.XID),
        _r(
            "DCGM_FI_DEV_POWER_VIOLATION",
            C,
            "Throttling duration due to power constraints (in ns).",
            Reading.POWER_VIOLATION_NS,
        ),
        _r(
            "DCGM_FI_DEV_THERMAL_VIOLATION",
            C,
            "Throttling duration due to thermal constraints (in ns).",
            Reading.THERMAL_VIOLATION_NS,
        ),
        _r(
            "DCGM_FI_DEV_SYNC_BOOST_VIOLATION",
            C,
            "Throttling duration due to sync-boost constraints (in ns).",
            Reading.SYNC_BOOST_VIOLATION_NS,
        ),
        _r(
            "DCGM_FI_DEV_BOARD_LIMIT_VIOLATION",
            C,
            "Throttling duration due to board limit constraints (in ns).",
            Reading.BOARD_LIMIT_VIOLATION_NS,
        ),
        _r(
            "DCGM_FI_DEV_LOW_UTIL_VIOLATION",
            C,
            "Throttling duration due to low utilization (in ns).",
            Reading.LOW_UTIL_VIOLATION_NS,
        ),
        _r(
            "DCGM_FI_DEV_RELIABILITY_VIOLATION",
            C,
            "Throttling duration due to reliability constraints (in ns).",
            Reading.RELIABILITY_VIOLATION_NS,
        ),
        _r("DCGM_FI_DEV_FB_FREE", G, "Framebuffer memory free (in MiB).", Reading.FB_FREE_MIB, scope=INST),
        _r("DCGM_FI_DEV_FB_USED", G, "Framebuffer memory used (in MiB).", Reading.FB_USED_MIB, scope=INST),
        _r("DCGM_FI_DEV_FB_RESERVED", G, "Framebuffer memory reserved (in MiB).", Reading.FB_RESERVED_MIB, scope=INST),
        _r("DCGM_FI_DEV_FB_TOTAL", G, "Framebuffer memory total (MiB).", Reading.FB_TOTAL_MIB, scope=INST),
        _r(
            "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
            C,
            "Total number of single-bit volatile ECC errors.",
            Reading.ECC_SBE_VOL_TOTAL,
        ),
        _r(
            "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
            C,
            "Total number of double-bit volatile ECC errors.",
            Reading.ECC_DBE_VOL_TOTAL,
        ),
        _r(
            "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
            C,
            "Total number of single-bit persistent ECC errors.",
            Reading.ECC_SBE_AGG_TOTAL,
        ),
        _r(
            "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
            C,
            "Total number of double-bit persistent ECC errors.",
            Reading.ECC_DBE_AGG_TOTAL,
        ),
        _r(
            "DCGM_FI_DEV_RETIRED_SBE", C, "Total number of retired pages due to single-bit errors.", Reading.RETIRED_SBE
        ),
        _r(
            "DCGM_FI_DEV_RETIRED_DBE", C, "Total number of retired pages due to double-bit errors.", Reading.RETIRED_DBE
        ),
        _r("DCGM_FI_DEV_RETIRED_PENDING", C, "Total number of pages pending retirement.", Reading.RETIRED_PENDING),
        _r(
            "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
            C,
            "Total number of NVLink bandwidth counters for all lanes.",
            Reading.NVLINK_BANDWIDTH_TOTAL,
        ),
        _r("DCGM_FI_DEV_VGPU_LICENSE_STATUS", G, "vGPU License status", Reading.VGPU_LICENSE_STATUS),
        _r(
            "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
            C,
            "Number of remapped rows for uncorrectable errors",
            Reading.UNCORRECTABLE_REMAPPED_ROWS,
        ),
        _r(
            "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
            C,
            "Number of remapped rows for correctable errors",
            Reading.CORRECTABLE_REMAPPED_ROWS,
        ),
        _r("DCGM_FI_DEV_ROW_REMAP_FAILURE", G, "Whether remapping of rows has failed", Reading.ROW_REMAP_FAILURE),
        _r("DCGM_FI_DEV_FAN_SPEED", G, "Fan speed (%).", Reading.FAN_SPEED_PCT),
        _r("DCGM_FI_DEV_PSTATE", G, "Performance state, 0 (highest) to 15.", Reading.PSTATE),
        _r(
            "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
            G,
            "Ratio of time the graphics engine is active.",
            Reading.GR_ENGINE_ACTIVE,
            scope=INST,
            # Without GPM: NVML's utilisation rate, the share of time a kernel (graphics/compute) was active.
            fallback=Reading.GPU_UTIL_PCT,
            fallback_scale=0.01,
        ),
        _r(
            "DCGM_FI_PROF_SM_ACTIVE",
            G,
            "The ratio of cycles an SM has at least 1 warp assigned.",
            Reading.SM_ACTIVE,
            scope=INST,
        ),
        _r(
            "DCGM_FI_PROF_SM_OCCUPANCY",
            G,
            "The ratio of number of warps resident on an SM.",
            Reading.SM_OCCUPANCY,
            scope=INST,
        ),
        _r(
            "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
            G,
            "Ratio of cycles the tensor (HMMA) pipe is active.",
            Reading.PIPE_TENSOR_ACTIVE,
            scope=INST,
        ),
        _r(
            "DCGM_FI_PROF_PIPE_FP64_ACTIVE",
            G,
            "Ratio of cycles the fp64 pipes are active.",
            Reading.PIPE_FP64_ACTIVE,
            scope=INST,
        ),
        _r(
            "DCGM_FI_PROF_PIPE_FP32_ACTIVE",
            G,
            "Ratio of cycles the fp32 pipes are active.",
            Reading.PIPE_FP32_ACTIVE,
            scope=INST,
        ),
        _r(
            "DCGM_FI_PROF_PIPE_FP16_ACTIVE",
            G,
            "Ratio of cycles the fp16 pipes are active.",
            Reading.PIPE_FP16_ACTIVE,
            scope=INST,
        ),
        _r(
            "DCGM_FI_PROF_DRAM_ACTIVE",
            G,
            "Ratio of cycles the device memory interface is active sending or receiving data.",
            Reading.DRAM_ACTIVE,
            scope=INST,
        ),
        _r(
            "DCGM_FI_PROF_PCIE_TX_BYTES",
            G,
            "The rate of data transmitted over the PCIe bus - including both protocol headers and data payloads"
            " - in bytes per second.",
            Reading.PCIE_TX_BYTES,
        ),
        _r(
            "DCGM_FI_PROF_PCIE_RX_BYTES",
            G,
            "The rate of data received over the PCIe bus - including both protocol headers and data payloads"
            " - in bytes per second.",
            Reading.PCIE_RX_BYTES,
        ),
        _r(
            "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
            G,
            "Current clock event reasons (bitmask of DCGM_CLOCKS_EVENT_REASON_*).",
            Reading.CLOCK_EVENT_REASONS,
        ),
        _r(
            "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
            C,
            "Total number of NVLink flow-control CRC errors.",
            Reading.NVLINK_CRC_FLIT_ERRORS,
        ),
        _r(
            "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL",
            C,
            "Total number of NVLink data CRC errors.",
            Reading.NVLINK_CRC_DATA_ERRORS,
        ),
        _r(
            "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL",
            C,
            "Total number of NVLink retries.",
            Reading.NVLINK_REPLAY_ERRORS,
        ),
        _r(
            "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL",
            C,
            "Total number of NVLink recovery errors.",
            Reading.NVLINK_RECOVERY_ERRORS,
        ),
        FieldSpec("DCGM_EXP_XID_ERRORS_COUNT", XID_COUNT_ID, C, "reported XIDs during last window", Source.XID_COUNT),
        FieldSpec("DCGM_EXP_GPU_HEALTH_STATUS", GPU_HEALTH_STATUS_ID, C, "DCGM reported health status", Source.HEALTH),
        FieldSpec(
            "DCGM_EXP_CLOCK_EVENTS_COUNT",
            CLOCK_EVENTS_COUNT_ID,
            C,
            "reported clock events",
            Source.CLOCK_EVENTS_COUNT,
            Reading.CLOCK_EVENT_REASONS,
        ),
        _label("DCGM_FI_DRIVER_VERSION", "Driver Version", lambda inv, _gpu: inv.driver_version),
        _label("DCGM_FI_NVML_VERSION", "NVML Version", lambda inv, _gpu: inv.nvml_version),
        _label("DCGM_FI_DEV_BRAND", "Device Brand", lambda _inv, gpu: gpu.brand),
        _label("DCGM_FI_DEV_SERIAL", "Device Serial Number", lambda _inv, gpu: gpu.serial),
        _label("DCGM_FI_DEV_VBIOS_VERSION", "VBIOS version of the device", lambda _inv, gpu: gpu.vbios_version),
    )
}

BY_ID: dict[int, FieldSpec] = {f.field_id: f for f in FIELDS.values()}

UNSERVED_EXPORTER_FIELDS: dict[str, str] = {
    "DCGM_EXP_P2P_STATUS": "needs DCGM's P2P link status",
}
"""dcgm-exporter's own fields this file does not select, with the reason (not computed, or exported elsewhere)."""


def unserved_reason(name: str) -> str | None:
    """Why a known field name has no value here (None: the name is served, or not a field at all)."""
    if name in UNSERVED_EXPORTER_FIELDS:
        return UNSERVED_EXPORTER_FIELDS[name]
    field_id = dcgm_names().get(name)
    if field_id is None or field_id in BY_ID:
        return None
    return f"DCGM field {field_id} is not read by this agent (no NVML reading for it)"


def resolve(name: str) -> FieldSpec | None:
    """The spec serving ``name``: one of ours, or a DCGM alias (legacy name) with the same field id."""
    spec = FIELDS.get(name)
    if spec is not None:
        return spec
    field_id = dcgm_names().get(name)
    return None if field_id is None else BY_ID.get(field_id)


def known_names() -> list[str]:
    return [*FIELDS, *UNSERVED_EXPORTER_FIELDS, *dcgm_names()]


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
    alias: str = ""
    """The name the CSV used when it differs from the spec's (a legacy DCGM name such as
    ``dcgm_sm_clock``); dcgm-exporter names the series after the CSV, and so do we."""

    @property
    def name(self) -> str:
        return self.alias or self.spec.name


def default_counters() -> tuple[Counter, ...]:
    return tuple(Counter(FIELDS[n], FIELDS[n].kind, FIELDS[n].help) for n in DEFAULT_FIELDS)
