"""Readings → NVML calls, for the NVML backend.

``Calls`` wraps the calls for one GPU inside a sweep: timed through the Hop (so the watchdog sees them),
with NVML errors classified (NotSupported remembered as absent, GPU is lost raised as GpuLost, anything
else counted by call name). Each reader makes the cheapest NVML call(s) for its group of readings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from nodeagent.backends.gpu.sweep import GpuLost, Hop
from nodeagent.model.gpu import GPM_READINGS, MIG_READINGS, GpuInfo, Reading
from nodeagent.model.topology import GpuLinks

MIB = 1024 * 1024


class CallOwner(Protocol):
    """What Calls needs from the backend: the module and how to tell its errors apart."""

    @property
    def nv(self) -> Any: ...

    @property
    def nvml_error(self) -> type[Exception]: ...

    @property
    def unsupported_codes(self) -> frozenset[int]: ...

    @property
    def absent_codes(self) -> frozenset[int]: ...

    def missing_function(self, name: str) -> None: ...

    def monotonic(self) -> float: ...


# GPM metric ids (nvmlGpmMetricId_t) and the factor from NVML's unit to ours (percent → ratio, MiB/s → B/s).
GPM_METRICS: Mapping[Reading, tuple[int, float]] = {
    Reading.GR_ENGINE_ACTIVE: (1, 0.01),
    Reading.SM_ACTIVE: (2, 0.01),
    Reading.SM_OCCUPANCY: (3, 0.01),
    Reading.PIPE_TENSOR_ACTIVE: (5, 0.01),
    Reading.DRAM_ACTIVE: (10, 0.01),
    Reading.PIPE_FP64_ACTIVE: (11, 0.01),
    Reading.PIPE_FP32_ACTIVE: (12, 0.01),
    Reading.PIPE_FP16_ACTIVE: (13, 0.01),
    Reading.PCIE_TX_BYTES: (20, float(MIB)),
    Reading.PCIE_RX_BYTES: (21, float(MIB)),
}

FB_READINGS = frozenset({Reading.FB_FREE_MIB, Reading.FB_USED_MIB, Reading.FB_TOTAL_MIB, Reading.FB_RESERVED_MIB})
MIG_FB = MIG_READINGS - GPM_READINGS
MIG_GPM = MIG_READINGS & GPM_READINGS


def text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").rstrip("\x00")
    return str(value)


def _field_number(nv: Any, fv: Any) -> float:
    kind = fv.valueType
    v = fv.value
    if kind == nv.NVML_VALUE_TYPE_DOUBLE:
        return float(v.dVal)
    if kind == nv.NVML_VALUE_TYPE_UNSIGNED_INT:
        return float(v.uiVal)
    if kind == nv.NVML_VALUE_TYPE_UNSIGNED_LONG:
        return float(v.ulVal)
    if kind == nv.NVML_VALUE_TYPE_SIGNED_LONG_LONG:
        return float(v.sllVal)
    if kind == nv.NVML_VALUE_TYPE_SIGNED_INT:
        return float(v.siVal)
    if kind == getattr(nv, "NVML_VALUE_TYPE_UNSIGNED_SHORT", -1):
        return float(v.usVal)
    return float(v.ullVal)


# ------------------------------------------------------------------------------------------ per GPU


@dataclass
class GpmState:
    """Two GPM sample buffers; metrics come from the previous and the current one."""

    buffers: list[Any] = field(default_factory=list)
    primed: bool = False


@dataclass
class MigState:
    handle: Any
    gi: int
    ci: int
    uuid: str
    gpm: GpmState = field(default_factory=GpmState)
    unsupported: set[Reading] = field(default_factory=set)


@dataclass
class NvmlDevice:
    """What the NVML backend holds for one GPU between calls: its handle and identity, the readings it
    answered NotSupported, its GPM sample buffers and its MIG devices' handles."""

    index: int
    handle: Any = None
    uuid: str = ""
    info: GpuInfo | None = None
    unsupported: set[Reading] = field(default_factory=set)
    gpm_supported: bool = False
    gpm: GpmState = field(default_factory=GpmState)
    mig: dict[int, MigState] = field(default_factory=dict)
    mem_v1_only: bool = False
    nvlink_last: tuple[float, float] | None = None
    """(seconds, KiB) of the previous NVLink data reading, for DCGM's bandwidth rate."""
    links: GpuLinks | None = None
    links_complete: bool = False
    """Whether ``links`` has every pair it reads (then it is not read again)."""


class Calls:
    """NVML calls for one GPU inside a hop: timed, with NVML errors classified."""

    __slots__ = ("gpu", "hop", "ns", "nv", "owner")

    def __init__(self, owner: CallOwner, hop: Hop, ns: set[Reading], gpu: NvmlDevice | None = None) -> None:
        self.owner = owner
        self.hop = hop
        self.nv = owner.nv
        self.ns = ns
        """Where NotSupported readings are remembered."""
        self.gpu = gpu

    def get(self, readings: Iterable[Reading], name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """The call's result; None when NotSupported (``readings`` are then remembered as absent) or failed
        (counted in Sample.failures). GPU is lost raises GpuLost."""
        try:
            return self.hop.call(name, fn, *args)
        except self.owner.nvml_error as err:
            code = getattr(err, "value", None)
            if code in self.owner.unsupported_codes:
                self.ns.update(readings)
                if code == self.nv.NVML_ERROR_FUNCTION_NOT_FOUND:
                    self.owner.missing_function(name)
            elif code == self.nv.NVML_ERROR_GPU_IS_LOST:
                raise GpuLost(
                    f"{name}: GPU is lost (NVML_ERROR_GPU_IS_LOST): it fell off the bus; reset or reboot"
                ) from None
            else:
                self.hop.fail(name)
            return None

    def opt(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Like ``get`` for a lookup where NotSupported, NotFound and InvalidArgument just mean 'none'."""
        try:
            return self.hop.call(name, fn, *args)
        except self.owner.nvml_error as err:
            code = getattr(err, "value", None)
            if code == self.nv.NVML_ERROR_GPU_IS_LOST:
                raise GpuLost(f"{name}: GPU is lost (NVML_ERROR_GPU_IS_LOST)") from None
            if code not in self.owner.absent_codes:
                self.hop.fail(name)
            return None


# ----------------------------------------------------------------------------------------------- readers
# Each reader makes the cheapest NVML call(s) for its readings and writes what it got into ``out``.

Reader = Callable[["Calls", Any, Any, frozenset[Reading], dict[Reading, float]], None]


def _clocks(c: Calls, nv: Any, h: Any, want: frozenset[Reading], out: dict[Reading, float]) -> None:
    for r, clock in ((Reading.SM_CLOCK_MHZ, nv.NVML_CLOCK_SM), (Reading.MEM_CLOCK_MHZ, nv.NVML_CLOCK_MEM)):
        if r in want:
            v = c.get((r,), "nvmlDeviceGetClockInfo", nv.nvmlDeviceGetClockInfo, h, clock)
            if v is not None:
                out[r] = float(v)


def _temperature(c: Calls, nv: Any, h: Any, want: frozenset[Reading], out: dict[Reading, float]) -> None:
    v = c.get(
        (Reading.GPU_TEMP_C,), "nvmlDeviceGetTemperature", nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU
    )
    if v is not None:
        out[Reading.GPU_TEMP_C] = float(v)


def _power(c: Calls, nv: Any, h: Any, want: frozenset[Reading], out: dict[Reading, float]) -> None:
    if Reading.POWER_W in want:
        v = c.get((Reading.POWER_W,), "nvmlDeviceGetPowerUsage", nv.nvmlDeviceGetPowerUsage, h)
        if v is not None:
            out[Reading.POWER_W] = v / 1000.0
    if Reading.POWER_LIMIT_W in want:
        v = c.get((Reading.POWER_LIMIT_W,), "nvmlDeviceGetEnforcedPowerLimit", nv.nvmlDeviceGetEnforcedPowerLimit, h)
        if v is not None:
            out[Reading.POWER_LIMIT_W] = v / 1000.0


def _energy(c: Calls, nv: Any, h: Any, want: frozenset[Reading], out: dict[Reading, float]) -> None:
    name = "nvmlDeviceGetTotalEnergyConsumption"
    v = c.get((Reading.TOTAL_ENERGY_MJ,), name, nv.nvmlDeviceGetTotalEnergyConsumption, h)
    if v is not None:
        out[Reading.TOTAL_ENERGY_MJ] = float(v)


def _replay(c: Calls, nv: Any, h: Any, want: frozenset[Reading], out: dict[Reading, float]) -> None:
    v = c.get((Reading.PCIE_REPLAY_COUNT,), "nvmlDeviceGetPcieReplayCounter", nv.nvmlDeviceGetPcieReplayCounter, h)
    if v is not None:
        out[Reading.PCIE_REPLAY_COUNT] = float(v)


_UTIL = frozenset({Reading.GPU_UTIL_PCT, Reading.MEM_COPY_UTIL_PCT})


def _utilization(c: Calls, nv: Any, h: Any, want: frozenset[Reading], out: dict[Reading, float]) -> None:
    v = c.get(_UTIL, "nvmlDeviceGetUtilizationRates", nv.nvmlDeviceGetUtilizationRates, h)
    if v is not None:
        out[Reading.GPU_UTIL_PCT] = float(v.gpu)
        out[Reading.MEM_COPY_UTIL_PCT] = float(v.memory)


def _codec(c: Calls, nv: Any, h: Any, want: frozenset[Reading], out: dict[Reading, float]) -> None:
    for r, name in (
        (Reading.ENC_UTIL_PCT, "nvmlDeviceGetEncoderUtilization"),
        (Reading.DEC_UTIL_PCT, "nvmlDeviceGetDecoderUtilization"),
    ):
        if r in want:
            v = c.get((r,), name, getattr(nv, name), h)
            if v is not None:
                out[r] = float(v[0])


def _memory(c: Calls, nv: Any, h: Any, want: frozenset[Reading], out: dict[Reading, float]) -> None:
    gpu = c.gpu
    v2 = getattr(nv, "nvmlMemory_v2", None)
    if v2 is not None and gpu is not None and not gpu.mem_v1_only:
        probe: set[Reading] = set()
        m = Calls(c.owner, c.hop, probe).get(
            (Reading.FB_RESERVED_MIB,), "nvmlDeviceGetMemoryInfo_v2", nv.nvmlDeviceGetMemoryInfo, h, v2
        )
        if m is not None:
            out[Reading.FB_TOTAL_MIB] = float(m.total // MIB)
            out[Reading.FB_USED_MIB] = float(m.used // MIB)
            out[Reading.FB_FREE_MIB] = float(m.free // MIB)
            out[Reading.FB_RESERVED_MIB] = float(m.reserved // MIB)
            return
        if not probe:
            return  # a failure, counted; try again next sweep
        gpu.mem_v1_only = True  # an old driver: memory info without "reserved"
        c.ns.add(Reading.FB_RESERVED_MIB)
    m = c.get(FB_READINGS, "nvmlDeviceGetMemoryInfo", nv.nvmlDeviceGetMemoryInfo, h)
    if m is not None:
        out[Reading.FB_TOTAL_MIB] = float(m.total // MIB)
        out[Reading.FB_USED_MIB] = float(m.used // MIB)
        out[Reading.FB_FREE_MIB] = float(m.free // MIB)


def _fields(c: Calls, nv: Any, h: Any, want: frozenset[Reading], out: dict[Reading, float]) -> None:
    """Readings that only exist as NVML field values, in one batched call."""
    ids = {
        Reading.MEMORY_TEMP_C: nv.NVML_FI_DEV_MEMORY_TEMP,
        Reading.NVLINK_CRC_FLIT_ERRORS: nv.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL,
        Reading.NVLINK_CRC_DATA_ERRORS: nv.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL,
        Reading.NVLINK_REPLAY_ERRORS: nv.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL,
        Reading.NVLINK_RECOVERY_ERRORS: nv.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL,
    }
    asked = [r for r in ids if r in want]
    values = c.get(asked, "nvmlDeviceGetFieldValues", nv.nvmlDeviceGetFieldValues, h, [ids[r] for r in asked])
    if values is None:
        return
    for r, fv in zip(asked, values, strict=False):
        ret = fv.nvmlReturn
        if ret == nv.NVML_SUCCESS:
            out[r] = _field_number(nv, fv)
        elif ret in c.owner.unsupported_codes:
            c.ns.add(r)
        elif ret == nv.NVML_ERROR_GPU_IS_LOST:
            raise GpuLost("nvmlDeviceGetFieldValues: GPU is lost (NVML_ERROR_GPU_IS_LOST)")
        else:
            c.hop.fail("nvmlDeviceGetFieldValues")


ALL_LINKS = 0xFFFFFFFF
"""Field-value scope id meaning every NVLink of the GPU (DCGM passes it verbatim to NVML)."""


def _nvlink_throughput(c: Calls, nv: Any, h: Any, want: frozenset[Reading], out: dict[Reading, float]) -> None:
    """DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL as DCGM computes it (DcgmCacheManager's ReadAndCacheNvLinkBandwidth):
    NVML's cumulative NVLINK_THROUGHPUT_DATA_RX + DATA_TX (KiB, all links), the difference to the previous
    reading per second / 1000; 0 on the first reading. The legacy BANDWIDTH_C0 counters are gone on Hopper."""
    r = Reading.NVLINK_BANDWIDTH_TOTAL
    ids = [(nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, ALL_LINKS), (nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, ALL_LINKS)]
    values = c.get((r,), "nvmlDeviceGetFieldValues", nv.nvmlDeviceGetFieldValues, h, ids)
    if values is None:
        return
    total = 0.0
    stamp = 0.0
    for fv in values:
        ret = fv.nvmlReturn
        if ret in c.owner.unsupported_codes:
            c.ns.add(r)
            return
        if ret == nv.NVML_ERROR_GPU_IS_LOST:
            raise GpuLost("nvmlDeviceGetFieldValues: GPU is lost (NVML_ERROR_GPU_IS_LOST)")
        if ret != nv.NVML_SUCCESS:
            c.hop.fail("nvmlDeviceGetFieldValues")
            return
        total += _field_number(nv, fv)
        stamp = max(stamp, float(getattr(fv, "timestamp", 0) or 0) / 1e6)
    gpu = c.gpu
    if gpu is None:
        return
    now = stamp or c.owner.monotonic()
    last, gpu.nvlink_last = gpu.nvlink_last, (now, total)
    if last is None or now <= last[0] or total < last[1]:
        out[r] = 0.0
        return
    out[r] = float(int((total - last[1]) / (now - last[0]) / 1000.0))


_REMAP = (Reading.CORRECTABLE_REMAPPED_ROWS, Reading.UNCORRECTABLE_REMAPPED_ROWS, Reading.ROW_REMAP_FAILURE)


def _remapped_rows(c: Calls, nv: Any, h: Any, want: frozenset[Reading], out: dict[Reading, float]) -> None:
    v = c.get(_REMAP, "nvmlDeviceGetRemappedRows", nv.nvmlDeviceGetRemappedRows, h)
    if v is not None:
        corr, unc, _pending, failure = v
        out[Reading.CORRECTABLE_REMAPPED_ROWS] = float(corr)
        out[Reading.UNCORRECTABLE_REMAPPED_ROWS] = float(unc)
        out[Reading.ROW_REMAP_FAILURE] = float(failure)


def _ecc(c: Calls, nv: Any, h: Any, want: frozenset[Reading], out: dict[Reading, float]) -> None:
    table = (
        (Reading.ECC_SBE_VOL_TOTAL, nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_VOLATILE_ECC),
        (Reading.ECC_DBE_VOL_TOTAL, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC),
        (Reading.ECC_SBE_AGG_TOTAL, nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_AGGREGATE_ECC),
        (Reading.ECC_DBE_AGG_TOTAL, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_AGGREGATE_ECC),
    )
    for r, error_type, counter in table:
        if r in want:
            v = c.get((r,), "nvmlDeviceGetTotalEccErrors", nv.nvmlDeviceGetTotalEccErrors, h, error_type, counter)
            if v is not None:
                out[r] = float(v)


def _retired_pages(c: Calls, nv: Any, h: Any, want: frozenset[Reading], out: dict[Reading, float]) -> None:
    for r, cause in (
        (Reading.RETIRED_SBE, nv.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS),
        (Reading.RETIRED_DBE, nv.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR),
    ):
        if r in want:
            v = c.get((r,), "nvmlDeviceGetRetiredPages", nv.nvmlDeviceGetRetiredPages, h, cause)
            if v is not None:
                out[r] = float(len(v))
    if Reading.RETIRED_PENDING in want:
        name = "nvmlDeviceGetRetiredPagesPendingStatus"
        v = c.get((Reading.RETIRED_PENDING,), name, nv.nvmlDeviceGetRetiredPagesPendingStatus, h)
        if v is not None:
            out[Reading.RETIRED_PENDING] = float(v)


def _violations(c: Calls, nv: Any, h: Any, want: frozenset[Reading], out: dict[Reading, float]) -> None:
    table = (
        (Reading.POWER_VIOLATION_NS, nv.NVML_PERF_POLICY_POWER),
        (Reading.THERMAL_VIOLATION_NS, nv.NVML_PERF_POLICY_THERMAL),
        (Reading.SYNC_BOOST_VIOLATION_NS, nv.NVML_PERF_POLICY_SYNC_BOOST),
        (Reading.BOARD_LIMIT_VIOLATION_NS, nv.NVML_PERF_POLICY_BOARD_LIMIT),
        (Reading.LOW_UTIL_VIOLATION_NS, nv.NVML_PERF_POLICY_LOW_UTILIZATION),
        (Reading.RELIABILITY_VIOLATION_NS, nv.NVML_PERF_POLICY_RELIABILITY),
    )
    for r, policy in table:
        if r in want:
            v = c.get((r,), "nvmlDeviceGetViolationStatus", nv.nvmlDeviceGetViolationStatus, h, policy)
            if v is not None:
                out[r] = float(v.violationTime)


def _clock_events(c: Calls, nv: Any, h: Any, want: frozenset[Reading], out: dict[Reading, float]) -> None:
    """NVML's clocks event reasons use the same bit values as DCGM_FI_DEV_CLOCKS_EVENT_REASONS."""
    r = Reading.CLOCK_EVENT_REASONS
    v = c.get((r,), "nvmlDeviceGetCurrentClocksEventReasons", nv.nvmlDeviceGetCurrentClocksEventReasons, h)
    if v is not None:
        out[r] = float(v)


def _fan(c: Calls, nv: Any, h: Any, want: frozenset[Reading], out: dict[Reading, float]) -> None:
    v = c.get((Reading.FAN_SPEED_PCT,), "nvmlDeviceGetFanSpeed", nv.nvmlDeviceGetFanSpeed, h)
    if v is not None:
        out[Reading.FAN_SPEED_PCT] = float(v)


def _pstate(c: Calls, nv: Any, h: Any, want: frozenset[Reading], out: dict[Reading, float]) -> None:
    v = c.get((Reading.PSTATE,), "nvmlDeviceGetPerformanceState", nv.nvmlDeviceGetPerformanceState, h)
    if v is not None:
        out[Reading.PSTATE] = float(v)


def _pcie_throughput(c: Calls, nv: Any, h: Any, want: frozenset[Reading], out: dict[Reading, float]) -> None:
    for r, counter in (
        (Reading.PCIE_TX_THROUGHPUT_KBS, nv.NVML_PCIE_UTIL_TX_BYTES),
        (Reading.PCIE_RX_THROUGHPUT_KBS, nv.NVML_PCIE_UTIL_RX_BYTES),
    ):
        if r in want:
            v = c.get((r,), "nvmlDeviceGetPcieThroughput", nv.nvmlDeviceGetPcieThroughput, h, counter)
            if v is not None:
                out[r] = float(v)


def _vgpu_license(c: Calls, nv: Any, h: Any, want: frozenset[Reading], out: dict[Reading, float]) -> None:
    r = Reading.VGPU_LICENSE_STATUS
    mode = c.get((r,), "nvmlDeviceGetVirtualizationMode", nv.nvmlDeviceGetVirtualizationMode, h)
    if mode is None:
        return
    if mode != nv.NVML_GPU_VIRTUALIZATION_MODE_VGPU:
        c.ns.add(r)  # bare metal or pass-through: there is no vGPU licence to report
        return
    features = c.get((r,), "nvmlDeviceGetGridLicensableFeatures", nv.nvmlDeviceGetGridLicensableFeatures, h)
    if features is None:
        return
    if not features.isGridLicenseSupported or not features.licensableFeaturesCount:
        c.ns.add(r)
        return
    out[r] = float(features.gridLicensableFeatures[0].featureState)


READERS: tuple[tuple[frozenset[Reading], Reader], ...] = (
    (frozenset({Reading.SM_CLOCK_MHZ, Reading.MEM_CLOCK_MHZ}), _clocks),
    (frozenset({Reading.GPU_TEMP_C}), _temperature),
    (frozenset({Reading.POWER_W, Reading.POWER_LIMIT_W}), _power),
    (frozenset({Reading.PCIE_REPLAY_COUNT}), _replay),
    (_UTIL, _utilization),
    (frozenset({Reading.ENC_UTIL_PCT, Reading.DEC_UTIL_PCT}), _codec),
    (FB_READINGS, _memory),
    (frozenset({Reading.PSTATE}), _pstate),
    (frozenset({Reading.FAN_SPEED_PCT}), _fan),
    (frozenset(_REMAP), _remapped_rows),
    (frozenset({Reading.RETIRED_SBE, Reading.RETIRED_DBE, Reading.RETIRED_PENDING}), _retired_pages),
    (frozenset({Reading.VGPU_LICENSE_STATUS}), _vgpu_license),
    (frozenset({Reading.CLOCK_EVENT_REASONS}), _clock_events),
    (frozenset({Reading.NVLINK_BANDWIDTH_TOTAL}), _nvlink_throughput),
    (
        frozenset(
            {
                Reading.MEMORY_TEMP_C,
                Reading.NVLINK_CRC_FLIT_ERRORS,
                Reading.NVLINK_CRC_DATA_ERRORS,
                Reading.NVLINK_REPLAY_ERRORS,
                Reading.NVLINK_RECOVERY_ERRORS,
            }
        ),
        _fields,
    ),
    (frozenset({Reading.TOTAL_ENERGY_MJ}), _energy),
    (
        frozenset(
            {Reading.ECC_SBE_VOL_TOTAL, Reading.ECC_DBE_VOL_TOTAL, Reading.ECC_SBE_AGG_TOTAL, Reading.ECC_DBE_AGG_TOTAL}
        ),
        _ecc,
    ),
    (
        frozenset(
            {
                Reading.POWER_VIOLATION_NS,
                Reading.THERMAL_VIOLATION_NS,
                Reading.SYNC_BOOST_VIOLATION_NS,
                Reading.BOARD_LIMIT_VIOLATION_NS,
                Reading.LOW_UTIL_VIOLATION_NS,
                Reading.RELIABILITY_VIOLATION_NS,
            }
        ),
        _violations,
    ),
    (frozenset({Reading.PCIE_TX_THROUGHPUT_KBS, Reading.PCIE_RX_THROUGHPUT_KBS}), _pcie_throughput),
)
"""Every Reading except the GPM ones (read separately, two samples apart) has exactly one reader."""
