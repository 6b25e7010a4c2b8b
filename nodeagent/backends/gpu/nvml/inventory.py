"""NVML inventory: system versions, each GPU's identity and limits, MIG profiles, placements and instances."""

from __future__ import annotations

import ctypes
from dataclasses import replace
from typing import Any

from nodeagent.backends.gpu.nvml import topology
from nodeagent.backends.gpu.nvml.base import NvmlBase
from nodeagent.backends.gpu.nvml.readers import MIB, Calls, MigState, NvmlDevice, text
from nodeagent.backends.gpu.sweep import GpuLost, GpuUnreadable, Hop
from nodeagent.model.catalog import known_mig_profiles
from nodeagent.model.gpu import GpuHealthState, GpuInfo, Inventory, MigDevice, MigProfile

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


class NvmlInventory(NvmlBase):
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

    def inventory_blocking(self, hop: Hop | None = None) -> Inventory:
        """The inventory read on the calling thread, after ``init_blocking``."""
        hop = hop or Hop()
        driver, nvml_version, cuda = self._system_info(hop)
        gpus = tuple(self._gpu_info(hop, g.index) for g in self._gpus)
        return Inventory("nvml", driver, nvml_version, cuda, gpus, dict(self._mig_profiles))

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

    def _handle(self, c: Calls, g: NvmlDevice) -> Any:
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
        numa_call = getattr(nv, "nvmlDeviceGetNumaNodeId", None)  # pynvml 12+; older bindings lack it
        numa = c.opt("nvmlDeviceGetNumaNodeId", numa_call, h) if numa_call is not None else None
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
        if not g.links_complete:
            g.links, g.links_complete = topology.read(self, c, h, [o.handle for o in self._gpus], index)
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
            gpm_supported=g.gpm_supported,
            numa_node=int(numa) if isinstance(numa, int) and numa >= 0 else None,
            links=g.links,
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

    def _compute_profile(self, c: Calls, gih: Any, ci: int, gi_profile: MigProfile) -> tuple[str, int]:
        """The mig-parted name of a compute instance (``1c.3g.40gb``, or the GPU-instance profile when it
        spans it) and its start in compute slices, from ``nvmlComputeInstanceGetInfo``'s placement."""
        nv = self.nv
        cih = c.opt("nvmlGpuInstanceGetComputeInstanceById", nv.nvmlGpuInstanceGetComputeInstanceById, gih, ci)
        info = c.opt("nvmlComputeInstanceGetInfo", nv.nvmlComputeInstanceGetInfo, cih) if cih is not None else None
        if info is None:
            return gi_profile.name, 0
        slices, start = int(info.placement.size), int(info.placement.start)
        if 0 < slices < gi_profile.compute_slices:
            return f"{slices}c.{gi_profile.name}", start
        return gi_profile.name, start

    def _mig_devices(self, c: Calls, g: NvmlDevice, h: Any, profiles: tuple[MigProfile, ...]) -> tuple[MigDevice, ...]:
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
            compute_start = 0
            if ginfo is not None:
                known = by_id.get(int(ginfo.profileId))
                profile = known.name if known else f"profile-{ginfo.profileId}"
                start, size = int(ginfo.placement.start), int(ginfo.placement.size)
                if known is not None:
                    profile, compute_start = self._compute_profile(c, gih, int(ci), known)
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
                    compute_start=compute_start,
                )
            )
            if int(gi) in found:  # a further compute instance of a GPU instance: sampled through the first
                continue
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
