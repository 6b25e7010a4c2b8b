"""NVML backend (nvidia-ml-py, module ``pynvml``): inventory and readings of real GPUs.

Every NVML call runs on one dedicated worker thread (GpuSweeper: one hop per ``inventory()`` and per
``sample()``), each with the per-call timeout of ``gpu.call_timeout_s``. NotSupported makes a reading
absent (and is remembered per GPU until the next inventory, so it is not asked again every sweep); "GPU is
lost" makes the GPU LOST; a hung call makes it DEGRADED and skipped for a backoff period; other errors are
counted per call name in ``Sample.failures``. Library not found, driver not loaded and driver/library
version mismatch become BackendUnavailable with what to do about it.

pynvml is imported lazily and can be replaced by any module-like object with the same names (tests inject
a fake NVML surface at exactly this boundary). With a driver root, libnvidia-ml.so.1 is loaded from there.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from nodeagent.backends.gpu.nvml.library import (
    LIBRARY,
    LIBRARY_DIRS,
    WELL_KNOWN_DRIVER_ROOTS,
    find_nvml_library,
    unavailable_reason,
)
from nodeagent.backends.gpu.nvml.readers import (
    GPM_METRICS,
    MIB,
    MIG_FB,
    MIG_GPM,
    READERS,
    Calls,
    GpmState,
    GpuState,
    MigState,
    text,
)
from nodeagent.backends.gpu.sweep import GpuLost, GpuSweeper, GpuUnreadable, Hop
from nodeagent.backends.gpu.sweep import wanted_gpus as _wanted
from nodeagent.errors import BackendUnavailable, CallTimeout
from nodeagent.model.catalog import known_mig_profiles
from nodeagent.model.gpu import (
    GPM_READINGS,
    MIG_READINGS,
    GpuHealthState,
    GpuInfo,
    Inventory,
    MigDevice,
    MigKey,
    MigProfile,
    Reading,
    Sample,
    SampleRequest,
    XidEvent,
)

log = structlog.get_logger(__name__)

MAX_EVENTS_PER_SWEEP = 256
_INVALID_ID = 0xFFFFFFFF

ARCHITECTURES = {
    2: "Kepler",
    3: "Maxwell",
    4: "Pascal",
    5: "Volta",
    6: "Turing",
    7: "Ampere",
    8: "Ada Lovelace",
    9: "Hopper",
    10: "Blackwell",
    13: "Rubin",
}
"""nvmlDeviceGetArchitecture → the name nvidia-smi shows as Product Architecture."""

BRANDS = {
    1: "Quadro",
    2: "Tesla",
    3: "NVS",
    4: "GRID",
    5: "GeForce",
    6: "Titan",
    7: "NVIDIA Virtual Applications",
    8: "NVIDIA Virtual PC",
    9: "NVIDIA Virtual Compute Server",
    10: "NVIDIA RTX Virtual Workstation",
    11: "NVIDIA Cloud Gaming",
    12: "Quadro RTX",
    13: "NVIDIA RTX",
    14: "NVIDIA",
    15: "GeForce RTX",
    16: "Titan RTX",
}


# ----------------------------------------------------------------------------------------------- backend


class NvmlBackend:
    """GpuBackend over NVML. ``nvml``: a pynvml-like module (default: pynvml, imported at open)."""

    kind = "nvml"

    def __init__(
        self,
        *,
        call_timeout_s: float = 5.0,
        driver_root: str | None = None,
        nvml: Any = None,
        load_library: Callable[[str], Any] = ctypes.CDLL,
        degraded_backoff_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.driver_root = driver_root
        self._nvml = nvml
        self._load_library = load_library
        self._clock = clock
        self._sweeper = GpuSweeper(
            "nvml", call_timeout_s=call_timeout_s, backoff_initial_s=degraded_backoff_s, monotonic=monotonic
        )
        self.library_path: str | None = None
        """The libnvidia-ml that was loaded explicitly (None: the system loader's)."""
        self._gpus: list[GpuState] = []
        self._system = ("", "", 0)
        self._mig_profiles: dict[str, tuple[MigProfile, ...]] = {}
        self.mig_details: dict[str, dict[str, dict[str, int]]] = {}
        """GPU name → GI profile name → multiprocessors and engine counts (for ``sim record``)."""
        self._event_set: Any = None
        self._missing: set[str] = set()
        self._opened = False

    # ---- module and error plumbing

    @functools.cached_property
    def nv(self) -> Any:
        if self._nvml is not None:
            return self._nvml
        try:
            import pynvml
        except ImportError as err:
            raise BackendUnavailable(f"nvidia-ml-py (module pynvml) is not installed: {err}") from None
        return pynvml

    @functools.cached_property
    def nvml_error(self) -> type[Exception]:
        error: type[Exception] = self.nv.NVMLError
        return error

    @functools.cached_property
    def unsupported_codes(self) -> frozenset[int]:
        return frozenset({self.nv.NVML_ERROR_NOT_SUPPORTED, self.nv.NVML_ERROR_FUNCTION_NOT_FOUND})

    @functools.cached_property
    def absent_codes(self) -> frozenset[int]:
        nv = self.nv
        # Optional lookups (MIG instances, GI profiles): "none here" or "not for this user", not failures.
        return self.unsupported_codes | {
            nv.NVML_ERROR_NOT_FOUND,
            nv.NVML_ERROR_INVALID_ARGUMENT,
            nv.NVML_ERROR_NO_PERMISSION,
        }

    def missing_function(self, name: str) -> None:
        if name not in self._missing:
            self._missing.add(name)
            log.warning("nvml_function_missing", call=name, hint="the driver is older than nvidia-ml-py")

    # ---- GpuBackend

    async def open(self) -> None:
        try:
            count = await self._sweeper.call("nvmlInit", self.init_blocking)
        except CallTimeout as err:
            raise BackendUnavailable(f"NVML did not answer: {err}; the driver may be hung (check dmesg)") from None
        log.info(
            "nvml_opened", gpus=count, library=self.library_path or LIBRARY, driver_root=self.driver_root or "system"
        )
        inventory = await self.inventory()
        self._system = (inventory.driver_version, inventory.nvml_version, inventory.cuda_driver_version)
        try:
            await self._sweeper.call("nvmlEventSetCreate", self._create_event_set)
        except CallTimeout:
            log.warning("nvml_events_unavailable", reason="nvmlEventSetCreate hung; no XID events")
        self._opened = True

    async def close(self) -> None:
        if not self._gpus and not self._opened:
            self._sweeper.shutdown()
            return
        self._opened = False
        try:
            await self._sweeper.call("nvmlShutdown", self._shutdown)
        except CallTimeout:
            log.warning("nvml_shutdown_hung")
        finally:
            self._gpus = []
            self._sweeper.shutdown()

    async def inventory(self) -> Inventory:
        result = await self._sweeper.sweep(
            range(len(self._gpus)), self._gpu_info, head=self._system_info, name="inventory"
        )
        driver, nvml_version, cuda = result.head or self._system
        gpus = []
        for g in self._gpus:
            info = result.results.get(g.index) or g.info or _placeholder(g.index)
            state = self._sweeper.health.state(g.index)
            if state != GpuHealthState.OK:
                info = replace(info, health=state, health_reason=self._sweeper.health.reason(g.index))
            gpus.append(info)
        return Inventory(
            backend="nvml",
            driver_version=driver,
            nvml_version=nvml_version,
            cuda_driver_version=cuda,
            gpus=tuple(gpus),
            mig_profiles=dict(self._mig_profiles),
        )

    async def sample(self, request: SampleRequest) -> Sample:
        taken_at = self._clock()
        readings, include_mig = request.readings, request.include_mig

        def per_gpu(hop: Hop, index: int) -> tuple[dict[Reading, float], dict[MigKey, dict[Reading, float]]]:
            return self.read_gpu(hop, index, readings, include_mig)

        result = await self._sweeper.sweep(
            _wanted(len(self._gpus), request), per_gpu, tail=self._poll_events, name="sample"
        )
        gpus: dict[int, dict[Reading, float]] = {}
        mig: dict[MigKey, dict[Reading, float]] = {}
        for index, (values, mig_values) in result.results.items():
            gpus[index] = values
            mig.update(mig_values)
        return Sample(
            taken_at=taken_at,
            gpus=gpus,
            mig=mig,
            xids=tuple(result.tail or ()),
            failures=result.failures,
            health={
                g.index: self._sweeper.health.state(g.index) for g in self._gpus if g.index not in request.skip_gpus
            },
            duration_s=result.duration_s,
            call_seconds=result.call_seconds,
        )

    # ---- blocking API for one-shot commands (``sim record``), on the calling thread

    def inventory_blocking(self, hop: Hop | None = None) -> Inventory:
        """The inventory read on the calling thread, after ``init_blocking``."""
        hop = hop or Hop()
        driver, nvml_version, cuda = self._system_info(hop)
        gpus = tuple(self._gpu_info(hop, g.index) for g in self._gpus)
        return Inventory("nvml", driver, nvml_version, cuda, gpus, dict(self._mig_profiles))

    def handle(self, index: int) -> Any:
        return self._gpus[index].handle

    def gpm_supported(self, index: int) -> bool:
        return self._gpus[index].gpm_supported

    def shutdown_blocking(self) -> None:
        self._shutdown()
        self._gpus = []

    # ---- worker thread: open / close

    def init_blocking(self) -> int:
        """Load the library, nvmlInit, count the GPUs. Runs on the calling thread; raises BackendUnavailable."""
        nv = self.nv
        if self.driver_root:
            path = find_nvml_library(self.driver_root)
            if path is None:
                raise BackendUnavailable(
                    f"NVIDIA driver not found: no {LIBRARY} under the driver root {self.driver_root} "
                    f"(looked in {', '.join(LIBRARY_DIRS)}). Set driver.root to the folder that holds the driver, "
                    "or use --simulate to run without a GPU"
                )
            self._use_library(path)
        try:
            nv.nvmlInit()
        except self.nvml_error as err:
            if getattr(err, "value", None) != nv.NVML_ERROR_LIBRARY_NOT_FOUND or self.driver_root:
                raise BackendUnavailable(unavailable_reason(nv, err, library=self.library_path)) from None
            path = next(
                (p for p in map(find_nvml_library, WELL_KNOWN_DRIVER_ROOTS) if p is not None),
                None,
            )
            if path is None:
                raise BackendUnavailable(unavailable_reason(nv, err)) from None
            self._use_library(path)
            try:
                nv.nvmlInit()
            except self.nvml_error as err2:
                raise BackendUnavailable(unavailable_reason(nv, err2, library=self.library_path)) from None
        try:
            count = int(nv.nvmlDeviceGetCount())
        except self.nvml_error as err:
            raise BackendUnavailable(f"NVML cannot count the GPUs: {err}") from None
        self._gpus = [GpuState(i) for i in range(count)]
        return count

    def _use_library(self, path: Path) -> None:
        nv = self.nv
        if getattr(nv, "nvmlLib", None) is not None:
            return  # already loaded in this process (NVML keeps one library per process)
        try:
            nv.nvmlLib = self._load_library(str(path))
        except OSError as err:
            raise BackendUnavailable(f"cannot load {path}: {err}") from None
        self.library_path = str(path)

    def _create_event_set(self) -> None:
        nv = self.nv
        try:
            es = nv.nvmlEventSetCreate()
        except self.nvml_error as err:
            log.warning("nvml_events_unavailable", reason=str(err))
            return
        registered = 0
        for g in self._gpus:
            if g.handle is None:
                continue
            try:
                nv.nvmlDeviceRegisterEvents(g.handle, nv.nvmlEventTypeXidCriticalError, es)
                registered += 1
            except self.nvml_error as err:
                log.info("nvml_xid_events_unsupported", gpu=g.index, reason=str(err))
        self._event_set = es
        log.info("nvml_xid_events", gpus=registered)

    def _shutdown(self) -> None:
        nv = self.nv
        for g in self._gpus:
            self._free_gpm(g.gpm)
            for m in g.mig.values():
                self._free_gpm(m.gpm)
        if self._event_set is not None:
            with contextlib.suppress(self.nvml_error):
                nv.nvmlEventSetFree(self._event_set)
            self._event_set = None
        try:
            nv.nvmlShutdown()
        except self.nvml_error as err:
            log.warning("nvml_shutdown_failed", error=str(err))

    def _free_gpm(self, gpm: GpmState) -> None:
        for buf in gpm.buffers:
            with contextlib.suppress(self.nvml_error):
                self.nv.nvmlGpmSampleFree(buf)
        gpm.buffers, gpm.primed = [], False

    # ---- worker thread: inventory

    def _system_info(self, hop: Hop) -> tuple[str, str, int]:
        nv = self.nv
        c = Calls(self, hop, set())
        driver = c.get((), "nvmlSystemGetDriverVersion", nv.nvmlSystemGetDriverVersion)
        version = c.get((), "nvmlSystemGetNVMLVersion", nv.nvmlSystemGetNVMLVersion)
        cuda = c.get((), "nvmlSystemGetCudaDriverVersion", nv.nvmlSystemGetCudaDriverVersion)
        old_driver, old_version, old_cuda = self._system
        return (
            text(driver) if driver is not None else old_driver,
            text(version) if version is not None else old_version,
            int(cuda) if cuda is not None else old_cuda,
        )

    def _handle(self, c: Calls, g: GpuState) -> Any:
        if g.handle is None:
            g.handle = c.get((), "nvmlDeviceGetHandleByIndex", self.nv.nvmlDeviceGetHandleByIndex, g.index)
            if g.handle is None:
                raise GpuUnreadable(f"nvmlDeviceGetHandleByIndex({g.index}) failed")
        return g.handle

    def _gpu_info(self, hop: Hop, index: int) -> GpuInfo:
        nv = self.nv
        g = self._gpus[index]
        g.unsupported = set()  # support can change with the MIG mode: ask again
        g.mem_v1_only = False
        c = Calls(self, hop, set())
        h = self._handle(c, g)
        name = text(c.get((), "nvmlDeviceGetName", nv.nvmlDeviceGetName, h) or "")
        g.uuid = text(c.get((), "nvmlDeviceGetUUID", nv.nvmlDeviceGetUUID, h) or "")
        pci = c.get((), "nvmlDeviceGetPciInfo", nv.nvmlDeviceGetPciInfo, h)
        mem = c.get((), "nvmlDeviceGetMemoryInfo", nv.nvmlDeviceGetMemoryInfo, h)
        cc = c.get((), "nvmlDeviceGetCudaComputeCapability", nv.nvmlDeviceGetCudaComputeCapability, h)
        arch = c.get((), "nvmlDeviceGetArchitecture", nv.nvmlDeviceGetArchitecture, h)
        brand = c.get((), "nvmlDeviceGetBrand", nv.nvmlDeviceGetBrand, h)
        minor = c.get((), "nvmlDeviceGetMinorNumber", nv.nvmlDeviceGetMinorNumber, h)
        serial = c.get((), "nvmlDeviceGetSerial", nv.nvmlDeviceGetSerial, h)
        vbios = c.get((), "nvmlDeviceGetVbiosVersion", nv.nvmlDeviceGetVbiosVersion, h)
        mode = c.opt("nvmlDeviceGetMigMode", nv.nvmlDeviceGetMigMode, h)
        support = c.opt("nvmlGpmQueryDeviceSupport", nv.nvmlGpmQueryDeviceSupport, h)
        g.gpm_supported = bool(support is not None and support.isSupportedDevice)
        mig_capable = mode is not None
        mig_enabled = bool(mode and mode[0] == nv.NVML_DEVICE_MIG_ENABLE)
        mig_pending = bool(mode and mode[1] == nv.NVML_DEVICE_MIG_ENABLE)
        if mig_capable and name and name not in self._mig_profiles:
            self._mig_profiles[name] = self._gi_profiles(c, h, name)
        mig_devices = self._mig_devices(c, g, h, self._mig_profiles.get(name, ())) if mig_enabled else ()
        if not mig_devices:
            for m in g.mig.values():
                self._free_gpm(m.gpm)
            g.mig = {}
        if not name and not g.uuid and g.info is not None:
            return g.info  # nothing answered: keep what we knew
        info = GpuInfo(
            index=index,
            uuid=g.uuid,
            name=name,
            pci_bus_id=text(pci.busId).upper() if pci is not None else "",
            pci_device_id=(int(pci.pciDeviceId) >> 16) if pci is not None else 0,
            pci_subsystem_id=int(pci.pciSubSystemId) if pci is not None else 0,
            minor_number=int(minor) if minor is not None else -1,
            memory_total_mib=int(mem.total // MIB) if mem is not None else 0,
            compute_capability=(int(cc[0]), int(cc[1])) if cc is not None else (0, 0),
            architecture=ARCHITECTURES.get(int(arch), f"unknown ({arch})") if arch is not None else "",
            brand=BRANDS.get(int(brand), f"unknown ({brand})") if brand is not None else "",
            serial=text(serial) if serial is not None else "",
            vbios_version=text(vbios) if vbios is not None else "",
            mig_capable=mig_capable,
            mig_enabled=mig_enabled,
            mig_pending=mig_pending,
            mig_devices=mig_devices,
        )
        g.info = info
        return info

    def _gi_profiles(self, c: Calls, h: Any, gpu_name: str) -> tuple[MigProfile, ...]:
        nv = self.nv
        profiles: list[MigProfile] = []
        details: dict[str, dict[str, int]] = {}
        for index in range(int(getattr(nv, "NVML_GPU_INSTANCE_PROFILE_COUNT", 16))):
            info = c.opt("nvmlDeviceGetGpuInstanceProfileInfo", nv.nvmlDeviceGetGpuInstanceProfileInfo, h, index)
            if info is None or not info.instanceCount:
                continue
            memory_mib = int(info.memorySizeMB)
            name = text(getattr(info, "name", b"")).removeprefix("MIG ").strip()
            if not name:
                name = f"{info.sliceCount}g.{round(memory_mib / 1024)}gb"
            placements = self._placements(c, h, int(info.id))
            if placements:
                size = placements[0][1]
                starts = tuple(sorted({start for start, _ in placements}))
            else:
                size, starts = _fallback_placement(gpu_name, name, int(info.sliceCount))
            profiles.append(
                MigProfile(
                    name=name,
                    profile_id=int(info.id),
                    slices=size,
                    starts=starts,
                    memory_mib=memory_mib,
                    compute_slices=int(info.sliceCount),
                    max_count=int(info.instanceCount),
                    media_extensions="+me" in name,
                )
            )
            details[name] = {
                "multiprocessors": int(info.multiprocessorCount),
                "copy": int(info.copyEngineCount),
                "decoder": int(info.decoderCount),
                "encoder": int(info.encoderCount),
                "jpeg": int(info.jpegCount),
                "ofa": int(info.ofaCount),
            }
        self.mig_details[gpu_name] = details
        return tuple(profiles)

    def _placements(self, c: Calls, h: Any, profile_id: int) -> list[tuple[int, int]]:
        nv = self.nv
        capacity = 16
        array = (nv.c_nvmlGpuInstancePlacement_t * capacity)()
        count = ctypes.c_uint(capacity)
        name = "nvmlDeviceGetGpuInstancePossiblePlacements"
        try:  # refused while MIG mode is off on some drivers: then the known table is used
            c.hop.call(name, nv.nvmlDeviceGetGpuInstancePossiblePlacements, h, profile_id, array, ctypes.byref(count))
        except self.nvml_error as err:
            if getattr(err, "value", None) == nv.NVML_ERROR_GPU_IS_LOST:
                raise GpuLost(f"{name}: GPU is lost (NVML_ERROR_GPU_IS_LOST)") from None
            return []
        return [(int(array[i].start), int(array[i].size)) for i in range(min(count.value, capacity))]

    def _mig_devices(self, c: Calls, g: GpuState, h: Any, profiles: tuple[MigProfile, ...]) -> tuple[MigDevice, ...]:
        nv = self.nv
        by_id = {p.profile_id: p for p in profiles}
        found: dict[int, MigState] = {}
        devices: list[MigDevice] = []
        slots = c.get((), "nvmlDeviceGetMaxMigDeviceCount", nv.nvmlDeviceGetMaxMigDeviceCount, h) or 0
        for i in range(int(slots)):
            mh = c.opt("nvmlDeviceGetMigDeviceHandleByIndex", nv.nvmlDeviceGetMigDeviceHandleByIndex, h, i)
            if mh is None:
                continue
            uuid = text(c.get((), "nvmlDeviceGetUUID", nv.nvmlDeviceGetUUID, mh) or "")
            gi = c.get((), "nvmlDeviceGetGpuInstanceId", nv.nvmlDeviceGetGpuInstanceId, mh)
            ci = c.get((), "nvmlDeviceGetComputeInstanceId", nv.nvmlDeviceGetComputeInstanceId, mh)
            if gi is None or ci is None:
                continue
            mem = c.get((), "nvmlDeviceGetMemoryInfo", nv.nvmlDeviceGetMemoryInfo, mh)
            profile, start, size = "", 0, 0
            gih = c.opt("nvmlDeviceGetGpuInstanceById", nv.nvmlDeviceGetGpuInstanceById, h, gi)
            ginfo = c.opt("nvmlGpuInstanceGetInfo", nv.nvmlGpuInstanceGetInfo, gih) if gih is not None else None
            if ginfo is not None:
                known = by_id.get(int(ginfo.profileId))
                profile = known.name if known else f"profile-{ginfo.profileId}"
                start, size = int(ginfo.placement.start), int(ginfo.placement.size)
            devices.append(
                MigDevice(
                    uuid=uuid,
                    gpu_index=g.index,
                    mig_index=i,
                    gpu_instance_id=int(gi),
                    compute_instance_id=int(ci),
                    profile=profile,
                    placement_start=start,
                    placement_size=size,
                    memory_total_mib=int(mem.total // MIB) if mem is not None else 0,
                )
            )
            old = g.mig.get(int(gi))
            if old is not None and old.uuid == uuid:
                old.handle = mh
                found[int(gi)] = old
            else:
                if old is not None:
                    self._free_gpm(old.gpm)
                found[int(gi)] = MigState(handle=mh, gi=int(gi), ci=int(ci), uuid=uuid)
        for gi, old in g.mig.items():
            if gi not in found:
                self._free_gpm(old.gpm)
        g.mig = found
        return tuple(devices)

    # ---- worker thread: sample

    def read_gpu(
        self, hop: Hop, index: int, readings: frozenset[Reading], include_mig: bool
    ) -> tuple[dict[Reading, float], dict[MigKey, dict[Reading, float]]]:
        """Every requested reading of one GPU (and its MIG devices). Raises GpuLost / GpuUnreadable."""
        nv = self.nv
        g = self._gpus[index]
        c = Calls(self, hop, g.unsupported, g)
        h = self._handle(c, g)
        want = readings - g.unsupported
        out: dict[Reading, float] = {}
        for covers, reader in READERS:
            if covers & want:
                reader(c, nv, h, want, out)
        gpm_want = want & GPM_READINGS
        if gpm_want and g.gpm_supported:
            values = self._gpm_metrics(
                c, gpm=g.gpm, get_name="nvmlGpmSampleGet", get=nv.nvmlGpmSampleGet, args=(h,), want=gpm_want
            )
            out.update(values)
        elif gpm_want:
            g.unsupported.update(GPM_READINGS)
        mig: dict[MigKey, dict[Reading, float]] = {}
        if include_mig and g.mig:
            mig_want = readings & MIG_READINGS
            for m in g.mig.values():
                mig[(index, m.gi)] = self._read_mig(hop, g, h, m, mig_want - m.unsupported)
        return out, mig

    def _read_mig(self, hop: Hop, g: GpuState, h: Any, m: MigState, want: frozenset[Reading]) -> dict[Reading, float]:
        nv = self.nv
        c = Calls(self, hop, m.unsupported)
        out: dict[Reading, float] = {}
        if want & MIG_FB:
            mem = c.get(MIG_FB, "nvmlDeviceGetMemoryInfo", nv.nvmlDeviceGetMemoryInfo, m.handle)
            if mem is not None:
                out[Reading.FB_TOTAL_MIB] = float(mem.total // MIB)
                out[Reading.FB_USED_MIB] = float(mem.used // MIB)
                out[Reading.FB_FREE_MIB] = float(mem.free // MIB)
        gpm_want = want & MIG_GPM
        if gpm_want and g.gpm_supported:
            out.update(
                self._gpm_metrics(
                    c,
                    gpm=m.gpm,
                    get_name="nvmlGpmMigSampleGet",
                    get=nv.nvmlGpmMigSampleGet,
                    args=(h, m.gi),
                    want=gpm_want,
                )
            )
        return out

    def _gpm_metrics(
        self,
        c: Calls,
        *,
        gpm: GpmState,
        get_name: str,
        get: Callable[..., Any],
        args: tuple[Any, ...],
        want: frozenset[Reading],
    ) -> dict[Reading, float]:
        """Take a GPM sample; with the previous one, compute the wanted metrics. The first sample of a
        GPU or MIG device yields nothing (GPM metrics are rates between two samples)."""
        nv = self.nv
        if not gpm.buffers:
            for _ in range(2):
                buf = c.get((), "nvmlGpmSampleAlloc", nv.nvmlGpmSampleAlloc)
                if buf is None:
                    self._free_gpm(gpm)
                    return {}
                gpm.buffers.append(buf)
        current, previous = gpm.buffers[0], gpm.buffers[1]
        if c.get(GPM_READINGS, get_name, get, *args, current) is None:
            gpm.primed = False
            return {}
        if not gpm.primed:
            gpm.primed = True
            gpm.buffers.reverse()  # the current sample becomes the previous one
            return {}
        asked = [r for r in GPM_METRICS if r in want]
        request = nv.c_nvmlGpmMetricsGet_t()
        request.version = nv.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(asked)
        request.sample1 = previous
        request.sample2 = current
        for i, r in enumerate(asked):
            request.metrics[i].metricId = GPM_METRICS[r][0]
        gpm.buffers.reverse()
        if c.get((), "nvmlGpmMetricsGet", nv.nvmlGpmMetricsGet, request) is None:
            return {}
        out: dict[Reading, float] = {}
        for i, r in enumerate(asked):
            metric = request.metrics[i]
            if metric.nvmlReturn == nv.NVML_SUCCESS:
                out[r] = float(metric.value) * GPM_METRICS[r][1]
            elif metric.nvmlReturn in self.unsupported_codes:
                c.ns.add(r)
        return out

    def _poll_events(self, hop: Hop) -> list[XidEvent]:
        """Drain the XID event set without waiting (timeout 0)."""
        nv = self.nv
        if self._event_set is None:
            return []
        events: list[XidEvent] = []
        by_uuid = {g.uuid: g.index for g in self._gpus if g.uuid}
        for _ in range(MAX_EVENTS_PER_SWEEP):
            try:
                data = hop.call("nvmlEventSetWait", nv.nvmlEventSetWait, self._event_set, 0)
            except self.nvml_error as err:
                if getattr(err, "value", None) != nv.NVML_ERROR_TIMEOUT:
                    hop.fail("nvmlEventSetWait")
                break
            if not data.eventType & nv.nvmlEventTypeXidCriticalError:
                continue
            uuid = ""
            try:
                uuid = text(hop.call("nvmlDeviceGetUUID", nv.nvmlDeviceGetUUID, data.device))
            except self.nvml_error:
                hop.fail("nvmlDeviceGetUUID")
            gi, ci = int(data.gpuInstanceId), int(data.computeInstanceId)
            events.append(
                XidEvent(
                    gpu_index=by_uuid.get(uuid, -1),
                    gpu_uuid=uuid,
                    xid=int(data.eventData),
                    timestamp=self._clock(),
                    gpu_instance_id=None if gi == _INVALID_ID else gi,
                    compute_instance_id=None if ci == _INVALID_ID else ci,
                )
            )
        if events:
            log.warning("gpu_xid", events=[(e.gpu_index, e.xid) for e in events])
        return events


def _placeholder(index: int) -> GpuInfo:
    """What we know of a GPU that never answered."""
    return GpuInfo(
        index=index,
        uuid="",
        name="unknown",
        pci_bus_id="",
        pci_device_id=0,
        pci_subsystem_id=0,
        minor_number=-1,
        memory_total_mib=0,
        compute_capability=(0, 0),
        architecture="",
        brand="",
        serial="",
        vbios_version="",
        mig_capable=False,
        mig_enabled=False,
        mig_pending=False,
    )


def _fallback_placement(gpu_name: str, profile: str, compute_slices: int) -> tuple[int, tuple[int, ...]]:
    """Placement of a GI profile when NVML will not list it (MIG mode off): the built-in table for the
    same GPU model, else the usual size for its compute slices with no known starts."""
    for p in known_mig_profiles(gpu_name) or ():
        if p.name == profile:
            return p.slices, p.starts
    return {1: 1, 2: 2, 3: 4, 4: 4, 7: 8}.get(compute_slices, compute_slices), ()
