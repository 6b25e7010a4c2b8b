"""``nodeagent sim record``: capture this node's GPU model through NVML into a simulation profile, so that
``--simulate ./my-node.json`` replays it (same name, PCI ids, memory, limits, clocks, MIG profiles and
placements, and which readings NVML answers NotSupported; idle readings become the simulator's baselines).

A one-shot CLI command: NVML is called on the calling thread. Mixed nodes record the model of GPU 0.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import structlog

from nodeagent.backends.gpu.nvml.backend import NvmlBackend
from nodeagent.backends.gpu.sim.profiles import PROFILE_FORMAT, profile_from_json
from nodeagent.backends.gpu.sweep import Hop
from nodeagent.backends.hostfs import atomic_write
from nodeagent.errors import BackendUnavailable, ConfigError, NodeAgentError
from nodeagent.model.gpu import GPM_READINGS, GpuInfo, Inventory, MigProfile, Reading

log = structlog.get_logger(__name__)

_MIG_HIDES = frozenset({Reading.GPU_UTIL_PCT, Reading.MEM_COPY_UTIL_PCT})
"""NotSupported on a GPU in MIG mode only, so not a property of the model."""


def record_profile(*, driver_root: str | None, out: Path, nvml: Any = None) -> Path:
    """Write a profile of GPU 0's model to ``out`` (atomically) and return its path.
    Raises BackendUnavailable when NVML cannot be used or sees no GPU, NodeAgentError when the GPU does not fit
    the profile format."""
    backend = NvmlBackend(driver_root=driver_root, nvml=nvml)
    hop = Hop()
    count = backend.init_blocking()
    try:
        if count == 0:
            raise BackendUnavailable("NVML sees no GPU on this node: nothing to record")
        inventory = backend.inventory_blocking(hop)
        values, _ = backend.read_gpu(hop, 0, frozenset(Reading), include_mig=False)
        extra = _extra(backend, hop)
        gpm = backend.gpm_supported(0)
    finally:
        backend.shutdown_blocking()
    details = backend.mig_details.get(inventory.gpus[0].name, {})
    doc = build_document(inventory, values, extra, details, gpm_supported=gpm)
    try:
        profile_from_json(doc, source=str(out), key=str(out))
    except ConfigError as err:  # a GPU we cannot describe in the format: say so instead of writing junk
        raise NodeAgentError(f"cannot record this GPU as a simulation profile: {err}") from None
    atomic_write(out, (json.dumps(doc, indent=2) + "\n").encode())
    log.info("sim_profile_recorded", path=str(out), gpu=inventory.gpus[0].name, count=doc["count"])
    return out


def _extra(backend: NvmlBackend, hop: Hop) -> dict[str, Any]:
    """Static values the sampler does not read: limits, maximum clocks, PCIe link, slowdown temperature."""
    nv = backend.nv
    h = backend.handle(0)

    def ask(name: str, *args: Any) -> Any:
        try:
            return hop.call(name, getattr(nv, name), h, *args)
        except backend.nvml_error:
            return None

    return {
        "power_limits": ask("nvmlDeviceGetPowerManagementLimitConstraints"),
        "power_default": ask("nvmlDeviceGetPowerManagementDefaultLimit"),
        "sm_max": ask("nvmlDeviceGetMaxClockInfo", nv.NVML_CLOCK_SM),
        "mem_max": ask("nvmlDeviceGetMaxClockInfo", nv.NVML_CLOCK_MEM),
        "slowdown": ask("nvmlDeviceGetTemperatureThreshold", nv.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN),
        "pcie_gen": ask("nvmlDeviceGetMaxPcieLinkGeneration"),
        "pcie_width": ask("nvmlDeviceGetMaxPcieLinkWidth"),
    }


def build_document(
    inventory: Inventory,
    values: dict[Reading, float],
    extra: dict[str, Any],
    mig_details: dict[str, dict[str, int]],
    *,
    gpm_supported: bool,
) -> dict[str, Any]:
    """The profile document for GPU 0's model (pure: tests feed it directly)."""
    gpu: GpuInfo = inventory.gpus[0]
    same = sum(1 for g in inventory.gpus if g.name == gpu.name)
    busy = values.get(Reading.GPU_UTIL_PCT, 0.0) >= 5.0
    limit = values.get(Reading.POWER_LIMIT_W) or (extra["power_default"] or 0) / 1000.0 or 300.0
    constraints = extra.get("power_limits") or (limit * 1000.0, limit * 1000.0)
    power = values.get(Reading.POWER_W, limit * 0.12)
    sm_max = int(extra.get("sm_max") or values.get(Reading.SM_CLOCK_MHZ) or 1500)
    mem_max = int(extra.get("mem_max") or values.get(Reading.MEM_CLOCK_MHZ) or 1500)
    slowdown = extra.get("slowdown")
    hidden = _MIG_HIDES if gpu.mig_enabled else frozenset()
    not_supported = sorted(r.value for r in Reading if r not in values and r not in GPM_READINGS and r not in hidden)
    if not gpm_supported:
        not_supported += sorted(r.value for r in GPM_READINGS)
    doc: dict[str, Any] = {
        "format": PROFILE_FORMAT,
        "description": f"{gpu.name} recorded from {socket.gethostname()}",
        "source": f"nodeagent sim record, NVML {inventory.nvml_version}, {time.strftime('%Y-%m-%d')}",
        "count": same,
        "driver": {
            "version": inventory.driver_version,
            "nvml_version": inventory.nvml_version,
            "cuda_driver_version": inventory.cuda_driver_version,
        },
        "gpu": {
            "name": gpu.name,
            "brand": gpu.brand or "NVIDIA",
            "architecture": gpu.architecture or "unknown",
            "pci_device_id": f"0x{gpu.pci_device_id:04X}",
            "pci_subsystem_id": f"0x{gpu.pci_subsystem_id:08X}",
            "compute_capability": list(gpu.compute_capability),
            "memory_total_mib": gpu.memory_total_mib,
            "memory_reserved_mib": int(values.get(Reading.FB_RESERVED_MIB, 0)),
            "vbios_version": gpu.vbios_version,
            "serial_prefix": gpu.serial[:4] if gpu.serial[:4].isdigit() else "",
            "power": {
                "limit_w": limit,
                "min_limit_w": constraints[0] / 1000.0,
                "max_limit_w": constraints[1] / 1000.0,
                "idle_w": round(min(power, limit * 0.9), 2) if not busy else round(limit * 0.12, 2),
            },
            "clocks": {
                "sm_idle_mhz": int(values.get(Reading.SM_CLOCK_MHZ, sm_max // 5)) if not busy else sm_max // 5,
                "sm_max_mhz": sm_max,
                "mem_idle_mhz": int(values.get(Reading.MEM_CLOCK_MHZ, mem_max)),
                "mem_max_mhz": mem_max,
            },
            "temperature": {
                "idle_c": values.get(Reading.GPU_TEMP_C, 35.0) if not busy else 35.0,
                "memory_idle_c": values.get(Reading.MEMORY_TEMP_C, 0.0),
                "slowdown_c": float(slowdown) if slowdown and slowdown > 40 else 87.0,
            },
            "pstate": {"idle": int(values.get(Reading.PSTATE, 0)) if not busy else 8, "busy": 0},
            "pcie": {"generation": int(extra.get("pcie_gen") or 4), "width": int(extra.get("pcie_width") or 16)},
            "gpm": gpm_supported,
        },
        "not_supported": sorted(set(not_supported)),
    }
    profiles = inventory.mig_profiles.get(gpu.name, ())
    if gpu.mig_capable and profiles and all(p.starts for p in profiles):
        doc["mig"] = _mig_document(profiles, mig_details)
    return doc


def _mig_document(profiles: tuple[MigProfile, ...], details: dict[str, dict[str, int]]) -> dict[str, Any]:
    out = []
    for p in profiles:
        d = details.get(p.name, {})
        item: dict[str, Any] = {
            "name": p.name,
            "id": p.profile_id,
            "slices": p.slices,
            "starts": list(p.starts),
            "memory_mib": p.memory_mib,
            "compute_slices": p.compute_slices,
            "max_count": p.max_count,
            "media_extensions": p.media_extensions,
        }
        if d:
            item["multiprocessors"] = d.get("multiprocessors", 0)
            item["engines"] = {k: d.get(k, 0) for k in ("copy", "decoder", "encoder", "jpeg", "ofa")}
        out.append(item)
    return {
        "memory_slices": max(p.starts[-1] + p.slices for p in profiles),
        "compute_slices": max(p.compute_slices for p in profiles),
        "profiles": out,
    }
