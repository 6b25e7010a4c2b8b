"""A hand-written fake NVML surface, injected where the backend would import pynvml.

Constants, ctypes structures and NVMLError come from the real pynvml module (they need no library); every
``nvml*`` function is ours and answers from FakeDevice objects built from the real H100 capture
(tests/backends/data/h100-80gb-hbm3). A function we do not implement raises FunctionNotFound, as an old
driver would. Devices can be made to hang (block until released), to be lost, or to fail one call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

NS = pynvml.NVML_ERROR_NOT_SUPPORTED
H100_PROFILES = (
    # profile index, id, compute slices, instances, MiB, SMs, copy engines, name, (start, size) placements
    (0, 19, 1, 7, 9984, 16, 1, "MIG 1g.10gb", [(s, 1) for s in range(7)]),
    (1, 14, 2, 3, 20096, 32, 2, "MIG 2g.20gb", [(0, 2), (2, 2), (4, 2)]),
    (2, 9, 3, 2, 40448, 60, 3, "MIG 3g.40gb", [(0, 4), (4, 4)]),
    (3, 5, 4, 1, 40448, 64, 4, "MIG 4g.40gb", [(0, 4)]),
    (4, 0, 7, 1, 81152, 132, 8, "MIG 7g.80gb", [(0, 8)]),
    (7, 20, 1, 1, 9984, 16, 1, "MIG 1g.10gb+me", [(s, 1) for s in range(7)]),
    (9, 15, 1, 4, 20096, 26, 1, "MIG 1g.20gb", [(0, 2), (2, 2), (4, 2), (6, 2)]),
)


def error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


@dataclass
class FakeMig:
    parent: FakeDevice
    slot: int
    uuid: str
    gi: int
    ci: int
    profile_id: int
    start: int
    size: int
    memory_mib: int
    used_mib: int = 100
    ci_slices: int = 0
    """Compute slices of its compute instance; 0: one spanning the GPU instance (not asked of NVML)."""
    ci_start: int = 0


@dataclass
class FakeDevice:
    index: int
    uuid: str
    bus_id: str
    minor: int
    name: str = "NVIDIA H100 80GB HBM3"
    serial: str = "1651524058704"
    vbios: str = "96.00.DA.00.0C"
    pci_device_id: int = 0x233010DE
    pci_subsystem_id: int = 0x16C110DE
    total: int = 85520809984
    reserved: int = 503316480
    used: int = 0
    cc: tuple[int, int] = (9, 0)
    arch: int = pynvml.NVML_DEVICE_ARCH_HOPPER
    brand: int = pynvml.NVML_BRAND_NVIDIA
    mig_mode: tuple[int, int] | None = (0, 0)
    migs: list[FakeMig] = field(default_factory=list)
    gpm_supported: bool = True
    numa_node: int | None = None
    """None: nvmlDeviceGetNumaNodeId answers NotSupported (a machine without NUMA)."""
    nvlinks: list[tuple[int, str]] = field(default_factory=list)
    """Per NVLink: (remote device type, remote PCI bus id); empty: nvmlDeviceGetNvLinkState is NotSupported
    (a PCIe board). Links past the list answer InvalidArgument, as past a GPU's link count."""
    nvlink_down: set[int] = field(default_factory=set)
    """Links that are there but not active."""
    levels: dict[int, int] = field(default_factory=dict)
    """Other device's index → nvmlDeviceGetTopologyCommonAncestor's level (default: NVML_TOPOLOGY_SYSTEM)."""
    gpm_values: dict[int, float] = field(
        default_factory=lambda: {
            1: 50.0,
            2: 40.0,
            3: 20.0,
            5: 10.0,
            10: 30.0,
            11: 1.0,
            12: 5.0,
            13: 2.0,
            20: 2.0,
            21: 3.0,
        }
    )
    temp: int = 50
    power_mw: int = 78452
    limit_mw: int = 700000
    energy_mj: int = 2528108
    sm_clock: int = 915
    mem_clock: int = 2619
    not_supported: set[str] = field(
        default_factory=lambda: {
            "nvmlDeviceGetRetiredPages",
            "nvmlDeviceGetRetiredPagesPendingStatus",
            "nvmlDeviceGetFanSpeed",
        }
    )
    field_not_supported: set[int] = field(
        default_factory=lambda: {
            pynvml.NVML_FI_DEV_NVLINK_BANDWIDTH_C0_TOTAL,
            pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
            pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
        }
    )
    nvlink_kib: dict[int, int] = field(default_factory=dict)
    """Field id → cumulative NVLink KiB it answers (scope: all links)."""
    errors: dict[str, int] = field(default_factory=dict)
    lost: bool = False
    hang_on: str = ""
    """Name of a call that blocks (until ``release``) on this device."""
    release: threading.Event = field(default_factory=threading.Event)
    virtualization_mode: int = pynvml.NVML_GPU_VIRTUALIZATION_MODE_PASSTHROUGH


class FakeGpmSample:
    def __init__(self, n: int) -> None:
        self.n = n
        self.taken_from: tuple[Any, ...] | None = None
        self.seq = -1
        self.freed = False


class FakeMetricsGet:
    """Stands in for pynvml.c_nvmlGpmMetricsGet_t (a ctypes struct in the real module)."""

    def __init__(self) -> None:
        self.version = 0
        self.numMetrics = 0
        self.sample1: Any = None
        self.sample2: Any = None
        self.metrics = [SimpleNamespace(metricId=0, nvmlReturn=0, value=0.0) for _ in range(pynvml.NVML_GPM_METRIC_MAX)]


class FakeNvml:
    """Module-like: attribute access falls back to pynvml for constants, structs and NVMLError."""

    c_nvmlGpmMetricsGet_t = FakeMetricsGet

    def __init__(self, devices: list[FakeDevice], *, init_errors: list[int] | None = None) -> None:
        self.devices = devices
        self.init_errors = list(init_errors or [])
        self.nvmlLib: Any = None
        self.calls: list[str] = []
        self.events: list[SimpleNamespace] = []
        self.event_arrived = threading.Condition()
        self.waits = 0
        """nvmlEventSetWait calls that blocked (timeout > 0 and nothing queued)."""
        self.initialised = False
        self.shutdowns = 0
        self.samples: list[FakeGpmSample] = []
        self._seq = 0
        self.lock = threading.Lock()
        self.field_requests: list[list[Any]] = []
        self.missing: set[str] = set()
        """Function names to report as FunctionNotFound (an old driver)."""

    def __getattr__(self, name: str) -> Any:
        value = getattr(pynvml, name)
        if name.startswith("nvml") and callable(value) and not isinstance(value, type):

            def not_found(*args: Any, **kwargs: Any) -> Any:
                self.calls.append(name)
                raise error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

            return not_found
        return value

    # ---- plumbing

    def _enter(self, name: str, h: Any = None) -> FakeDevice | None:
        with self.lock:
            self.calls.append(name)
        if name in self.missing:
            raise error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        dev = h.parent if isinstance(h, FakeMig) else h
        if not isinstance(dev, FakeDevice):
            return None
        if dev.hang_on == name:
            dev.release.wait()
        if dev.lost:
            raise error(pynvml.NVML_ERROR_GPU_IS_LOST)
        if name in dev.not_supported:
            raise error(NS)
        if name in dev.errors:
            raise error(dev.errors[name])
        return dev

    def calls_for(self, name: str) -> int:
        return sum(1 for c in self.calls if c == name)

    # ---- init / system

    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        if self.init_errors:
            raise error(self.init_errors.pop(0))
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return "580.159.04"

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._enter("nvmlSystemGetNVMLVersion")
        return "13.580.159.04"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion")
        return 13000

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        self._enter("nvmlDeviceGetHandleByIndex")
        dev = self.devices[index]
        if dev.lost:
            raise error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return dev

    # ---- static facts

    def nvmlDeviceGetName(self, h: Any) -> str:
        d = self._enter("nvmlDeviceGetName", h)
        assert d is not None
        return d.name

    def nvmlDeviceGetUUID(self, h: Any) -> str:
        d = self._enter("nvmlDeviceGetUUID", h)
        if isinstance(h, FakeMig):
            return h.uuid
        assert d is not None
        return d.uuid

    def nvmlDeviceGetPciInfo(self, h: Any) -> Any:
        d = self._enter("nvmlDeviceGetPciInfo", h)
        assert d is not None
        return SimpleNamespace(busId=d.bus_id.encode(), pciDeviceId=d.pci_device_id, pciSubSystemId=d.pci_subsystem_id)

    def nvmlDeviceGetNumaNodeId(self, h: Any) -> int:
        d = self._enter("nvmlDeviceGetNumaNodeId", h)
        assert d is not None
        if d.numa_node is None:
            raise error(NS)
        return d.numa_node

    # ---- topology

    def nvmlDeviceGetTopologyCommonAncestor(self, h1: Any, h2: Any) -> int:
        d = self._enter("nvmlDeviceGetTopologyCommonAncestor", h1)
        other = self._enter("nvmlDeviceGetTopologyCommonAncestor", h2)
        assert d is not None and other is not None
        return int(d.levels.get(other.index, other.levels.get(d.index, pynvml.NVML_TOPOLOGY_SYSTEM)))

    def _link(self, name: str, h: Any, link: int) -> tuple[int, str]:
        d = self._enter(name, h)
        assert d is not None
        if not d.nvlinks:
            raise error(NS)
        if not 0 <= link < len(d.nvlinks):
            raise error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return d.nvlinks[link]

    def nvmlDeviceGetNvLinkState(self, h: Any, link: int) -> int:
        self._link("nvmlDeviceGetNvLinkState", h, link)
        down = h.nvlink_down if isinstance(h, FakeDevice) else set()
        return int(pynvml.NVML_FEATURE_DISABLED if link in down else pynvml.NVML_FEATURE_ENABLED)

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, h: Any, link: int) -> int:
        return self._link("nvmlDeviceGetNvLinkRemoteDeviceType", h, link)[0]

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h: Any, link: int) -> Any:
        return SimpleNamespace(busId=self._link("nvmlDeviceGetNvLinkRemotePciInfo", h, link)[1].encode())

    def nvmlDeviceGetMinorNumber(self, h: Any) -> int:
        d = self._enter("nvmlDeviceGetMinorNumber", h)
        assert d is not None
        return d.minor

    def nvmlDeviceGetMemoryInfo(self, h: Any, version: Any = None) -> Any:
        name = "nvmlDeviceGetMemoryInfo" if version is None else "nvmlDeviceGetMemoryInfo_v2"
        d = self._enter(name, h)
        assert d is not None
        if isinstance(h, FakeMig):
            total = h.memory_mib * 1024 * 1024
            used = h.used_mib * 1024 * 1024
            if version is None:
                return SimpleNamespace(total=total, used=used, free=total - used)
            reserved = 20 * 1024 * 1024
            return SimpleNamespace(total=total, used=used, free=total - used - reserved, reserved=reserved)
        if version is None:  # v1: "used" includes what the driver reserves
            return SimpleNamespace(total=d.total, used=d.used + d.reserved, free=d.total - d.used - d.reserved)
        return SimpleNamespace(total=d.total, used=d.used, free=d.total - d.used - d.reserved, reserved=d.reserved)

    def nvmlDeviceGetCudaComputeCapability(self, h: Any) -> tuple[int, int]:
        d = self._enter("nvmlDeviceGetCudaComputeCapability", h)
        assert d is not None
        return d.cc

    def nvmlDeviceGetArchitecture(self, h: Any) -> int:
        d = self._enter("nvmlDeviceGetArchitecture", h)
        assert d is not None
        return d.arch

    def nvmlDeviceGetBrand(self, h: Any) -> int:
        d = self._enter("nvmlDeviceGetBrand", h)
        assert d is not None
        return d.brand

    def nvmlDeviceGetSerial(self, h: Any) -> str:
        d = self._enter("nvmlDeviceGetSerial", h)
        assert d is not None
        return d.serial

    def nvmlDeviceGetVbiosVersion(self, h: Any) -> str:
        d = self._enter("nvmlDeviceGetVbiosVersion", h)
        assert d is not None
        return d.vbios

    def nvmlGpmQueryDeviceSupport(self, h: Any) -> Any:
        d = self._enter("nvmlGpmQueryDeviceSupport", h)
        assert d is not None
        return SimpleNamespace(version=1, isSupportedDevice=int(d.gpm_supported))

    # ---- MIG

    def nvmlDeviceGetMigMode(self, h: Any) -> list[int]:
        d = self._enter("nvmlDeviceGetMigMode", h)
        assert d is not None
        if d.mig_mode is None:
            raise error(NS)
        return list(d.mig_mode)

    def nvmlDeviceGetGpuInstanceProfileInfo(self, h: Any, profile: int, version: int = 2) -> Any:
        d = self._enter("nvmlDeviceGetGpuInstanceProfileInfo", h)
        assert d is not None
        for index, pid, slices, count, mib, sms, ce, name, _ in H100_PROFILES:
            if index == profile:
                return SimpleNamespace(
                    id=pid,
                    sliceCount=slices,
                    instanceCount=count,
                    memorySizeMB=mib,
                    multiprocessorCount=sms,
                    copyEngineCount=ce,
                    decoderCount=slices,
                    encoderCount=0,
                    jpegCount=slices,
                    ofaCount=1 if pid in (0, 20) else 0,
                    name=name.encode(),
                )
        raise error(NS)

    def nvmlDeviceGetGpuInstancePossiblePlacements(self, h: Any, pid: int, array: Any, count_ref: Any) -> int:
        d = self._enter("nvmlDeviceGetGpuInstancePossiblePlacements", h)
        assert d is not None
        if not d.mig_mode or not d.mig_mode[0]:
            raise error(pynvml.NVML_ERROR_INVALID_STATE)
        for _, profile_id, *_rest, placements in H100_PROFILES:
            if profile_id == pid:
                for i, (start, size) in enumerate(placements):
                    array[i].start, array[i].size = start, size
                count_ref._obj.value = len(placements)
                return 0
        raise error(NS)

    def nvmlDeviceGetMaxMigDeviceCount(self, h: Any) -> int:
        self._enter("nvmlDeviceGetMaxMigDeviceCount", h)
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: Any, index: int) -> FakeMig:
        d = self._enter("nvmlDeviceGetMigDeviceHandleByIndex", h)
        assert d is not None
        for m in d.migs:
            if m.slot == index:
                return m
        raise error(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetGpuInstanceId(self, h: FakeMig) -> int:
        self._enter("nvmlDeviceGetGpuInstanceId", h)
        return h.gi

    def nvmlDeviceGetComputeInstanceId(self, h: FakeMig) -> int:
        self._enter("nvmlDeviceGetComputeInstanceId", h)
        return h.ci

    def nvmlDeviceGetGpuInstanceById(self, h: Any, gi: int) -> Any:
        d = self._enter("nvmlDeviceGetGpuInstanceById", h)
        assert d is not None
        for m in d.migs:
            if m.gi == gi:
                return SimpleNamespace(mig=m)
        raise error(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlGpuInstanceGetInfo(self, gih: Any) -> Any:
        self._enter("nvmlGpuInstanceGetInfo")
        m = gih.mig
        return SimpleNamespace(id=m.gi, profileId=m.profile_id, placement=SimpleNamespace(start=m.start, size=m.size))

    def nvmlGpuInstanceGetComputeInstanceById(self, gih: Any, ci: int) -> Any:
        self._enter("nvmlGpuInstanceGetComputeInstanceById")
        m = gih.mig
        for x in m.parent.migs:
            if x.gi == m.gi and x.ci == ci:
                return SimpleNamespace(mig=x)
        raise error(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlComputeInstanceGetInfo(self, cih: Any) -> Any:
        self._enter("nvmlComputeInstanceGetInfo")
        m = cih.mig
        if not m.ci_slices:
            raise error(NS)
        return SimpleNamespace(id=m.ci, placement=SimpleNamespace(start=m.ci_start, size=m.ci_slices))

    # ---- readings

    def nvmlDeviceGetClockInfo(self, h: Any, clock: int) -> int:
        d = self._enter("nvmlDeviceGetClockInfo", h)
        assert d is not None
        return d.sm_clock if clock == pynvml.NVML_CLOCK_SM else d.mem_clock

    def nvmlDeviceGetTemperature(self, h: Any, sensor: int) -> int:
        d = self._enter("nvmlDeviceGetTemperature", h)
        assert d is not None
        return d.temp

    def nvmlDeviceGetPowerUsage(self, h: Any) -> int:
        d = self._enter("nvmlDeviceGetPowerUsage", h)
        assert d is not None
        return d.power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, h: Any) -> int:
        d = self._enter("nvmlDeviceGetEnforcedPowerLimit", h)
        assert d is not None
        return d.limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, h: Any) -> int:
        d = self._enter("nvmlDeviceGetTotalEnergyConsumption", h)
        assert d is not None
        return d.energy_mj

    def nvmlDeviceGetPcieReplayCounter(self, h: Any) -> int:
        self._enter("nvmlDeviceGetPcieReplayCounter", h)
        return 0

    def nvmlDeviceGetUtilizationRates(self, h: Any) -> Any:
        d = self._enter("nvmlDeviceGetUtilizationRates", h)
        assert d is not None
        if d.mig_mode and d.mig_mode[0]:
            raise error(NS)
        return SimpleNamespace(gpu=42, memory=17)

    def nvmlDeviceGetEncoderUtilization(self, h: Any) -> list[int]:
        self._enter("nvmlDeviceGetEncoderUtilization", h)
        return [3, 100000]

    def nvmlDeviceGetDecoderUtilization(self, h: Any) -> list[int]:
        self._enter("nvmlDeviceGetDecoderUtilization", h)
        return [4, 100000]

    def nvmlDeviceGetFieldValues(self, h: Any, ids: list[int]) -> list[Any]:
        d = self._enter("nvmlDeviceGetFieldValues", h)
        assert d is not None
        out = []
        self.field_requests.append(list(ids))
        for item in ids:
            fid = item[0] if isinstance(item, tuple) else item
            if fid in d.field_not_supported:
                out.append(SimpleNamespace(fieldId=fid, nvmlReturn=NS, valueType=0, value=SimpleNamespace()))
            elif fid in d.nvlink_kib:
                value = SimpleNamespace(ullVal=d.nvlink_kib[fid])
                kind = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                out.append(SimpleNamespace(fieldId=fid, nvmlReturn=0, valueType=kind, value=value, timestamp=0))
            else:
                value = SimpleNamespace(uiVal=52, ullVal=52)
                kind = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
                out.append(SimpleNamespace(fieldId=fid, nvmlReturn=0, valueType=kind, value=value))
        return out

    def nvmlDeviceGetRemappedRows(self, h: Any) -> tuple[int, int, int, int]:
        self._enter("nvmlDeviceGetRemappedRows", h)
        return (1, 2, 0, 0)

    def nvmlDeviceGetTotalEccErrors(self, h: Any, error_type: int, counter: int) -> int:
        self._enter("nvmlDeviceGetTotalEccErrors", h)
        return 10 * error_type + counter

    def nvmlDeviceGetRetiredPages(self, h: Any, cause: int) -> list[int]:
        self._enter("nvmlDeviceGetRetiredPages", h)
        return [0x1000] * (cause + 1)

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: Any) -> int:
        self._enter("nvmlDeviceGetRetiredPagesPendingStatus", h)
        return 0

    def nvmlDeviceGetViolationStatus(self, h: Any, policy: int) -> Any:
        self._enter("nvmlDeviceGetViolationStatus", h)
        return SimpleNamespace(referenceTime=1, violationTime=1000 * (policy + 1))

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: Any) -> int:
        self._enter("nvmlDeviceGetCurrentClocksEventReasons", h)
        return 0x1  # GPU idle

    def nvmlDeviceGetFanSpeed(self, h: Any) -> int:
        self._enter("nvmlDeviceGetFanSpeed", h)
        return 30

    def nvmlDeviceGetPerformanceState(self, h: Any) -> int:
        self._enter("nvmlDeviceGetPerformanceState", h)
        return 0

    def nvmlDeviceGetPcieThroughput(self, h: Any, counter: int) -> int:
        self._enter("nvmlDeviceGetPcieThroughput", h)
        return 1770 if counter == pynvml.NVML_PCIE_UTIL_TX_BYTES else 533

    def nvmlDeviceGetVirtualizationMode(self, h: Any) -> int:
        d = self._enter("nvmlDeviceGetVirtualizationMode", h)
        assert d is not None
        return d.virtualization_mode

    def nvmlDeviceGetGridLicensableFeatures(self, h: Any) -> Any:
        self._enter("nvmlDeviceGetGridLicensableFeatures", h)
        feature = SimpleNamespace(featureState=1)
        return SimpleNamespace(isGridLicenseSupported=1, licensableFeaturesCount=1, gridLicensableFeatures=[feature])

    # ---- record extras

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h: Any) -> list[int]:
        self._enter("nvmlDeviceGetPowerManagementLimitConstraints", h)
        return [200000, 700000]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: Any) -> int:
        self._enter("nvmlDeviceGetPowerManagementDefaultLimit", h)
        return 700000

    def nvmlDeviceGetMaxClockInfo(self, h: Any, clock: int) -> int:
        self._enter("nvmlDeviceGetMaxClockInfo", h)
        return 1980 if clock == pynvml.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: Any) -> int:
        self._enter("nvmlDeviceGetMaxPcieLinkGeneration", h)
        return 5

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: Any) -> int:
        self._enter("nvmlDeviceGetMaxPcieLinkWidth", h)
        return 16

    # ---- GPM

    def nvmlGpmSampleAlloc(self) -> FakeGpmSample:
        self._enter("nvmlGpmSampleAlloc")
        s = FakeGpmSample(len(self.samples))
        self.samples.append(s)
        return s

    def nvmlGpmSampleFree(self, s: FakeGpmSample) -> None:
        self._enter("nvmlGpmSampleFree")
        s.freed = True

    def _take(self, s: FakeGpmSample, source: tuple[Any, ...]) -> FakeGpmSample:
        self._seq += 1
        s.taken_from, s.seq = source, self._seq
        return s

    def nvmlGpmSampleGet(self, h: Any, s: FakeGpmSample) -> FakeGpmSample:
        d = self._enter("nvmlGpmSampleGet", h)
        assert d is not None
        if not d.gpm_supported:
            raise error(NS)
        return self._take(s, (d.index,))

    def nvmlGpmMigSampleGet(self, h: Any, gi: int, s: FakeGpmSample) -> FakeGpmSample:
        d = self._enter("nvmlGpmMigSampleGet", h)
        assert d is not None
        return self._take(s, (d.index, gi))

    def nvmlGpmMetricsGet(self, request: FakeMetricsGet) -> FakeMetricsGet:
        self._enter("nvmlGpmMetricsGet")
        s1, s2 = request.sample1, request.sample2
        # GPM computes rates between two samples of the same device, older first.
        assert s1 is not s2 and s1.taken_from == s2.taken_from and s1.seq < s2.seq, (s1.__dict__, s2.__dict__)
        device = self.devices[s1.taken_from[0]]
        scale = 0.5 if len(s1.taken_from) == 2 else 1.0  # MIG instances report half the GPU's activity
        for i in range(request.numMetrics):
            m = request.metrics[i]
            if m.metricId in device.gpm_values:
                m.nvmlReturn, m.value = 0, device.gpm_values[m.metricId] * scale
            else:
                m.nvmlReturn, m.value = NS, 0.0
        return request

    # ---- events

    def nvmlEventSetCreate(self) -> str:
        self._enter("nvmlEventSetCreate")
        return "event-set"

    def nvmlDeviceRegisterEvents(self, h: Any, types: int, es: Any) -> None:
        self._enter("nvmlDeviceRegisterEvents", h)

    def nvmlEventSetWait(self, es: Any, timeout_ms: int) -> Any:
        self._enter("nvmlEventSetWait")
        with self.event_arrived:
            if not self.events and timeout_ms:
                self.waits += 1
                self.event_arrived.wait_for(lambda: bool(self.events), timeout_ms / 1000)
            if not self.events:
                raise error(pynvml.NVML_ERROR_TIMEOUT)
            return self.events.pop(0)

    def nvmlEventSetFree(self, es: Any) -> None:
        self._enter("nvmlEventSetFree")

    def xid(self, device: FakeDevice, xid: int, *, gi: int = 0xFFFFFFFF, ci: int = 0xFFFFFFFF) -> None:
        with self.event_arrived:
            self.events.append(
                SimpleNamespace(
                    device=device,
                    eventType=pynvml.nvmlEventTypeXidCriticalError,
                    eventData=xid,
                    gpuInstanceId=gi,
                    computeInstanceId=ci,
                )
            )
            self.event_arrived.notify_all()


def h100_node(count: int = 2, *, mig_on: tuple[int, ...] = ()) -> list[FakeDevice]:
    """H100s as captured; GPU 0 carries the capture's identity. GPUs in ``mig_on`` have 2 x 3g.40gb."""
    devices = []
    for i in range(count):
        uuid = "GPU-07ad00dd-2cf1-3178-492d-1bffa49e50c2" if i == 0 else f"GPU-00000000-0000-0000-0000-00000000000{i}"
        bus = "00000000:00:06.0" if i == 0 else f"00000000:{0x18 + i:02x}:00.0"
        d = FakeDevice(index=i, uuid=uuid, bus_id=bus, minor=i)
        if i in mig_on:
            d.mig_mode = (1, 1)
            d.migs = [
                FakeMig(d, 0, f"MIG-aaaaaaaa-0000-0000-0000-00000000000{i}", 1, 0, 9, 0, 4, 40448),
                FakeMig(d, 1, f"MIG-bbbbbbbb-0000-0000-0000-00000000000{i}", 2, 0, 9, 4, 4, 40448),
            ]
        devices.append(d)
    return devices
