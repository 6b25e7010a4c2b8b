"""Pick and open the GPU backend from settings: the simulator or NVML.

``gpu.backend = "auto"`` means the simulator when simulation is on, else NVML. ``probe_driver`` answers,
without initialising NVML, whether a driver appears to be present (its libnvidia-ml.so.1 can be loaded),
so that ``nodeagent run`` on a machine without one can say so and hint at ``--simulate``.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nodeagent.backends.types import GpuBackend, Inventory, Sample, SampleRequest
from nodeagent.settings import Settings


def backend_kind(settings: Settings) -> str:
    """``sim`` or ``nvml``."""
    if settings.gpu.backend == "auto":
        return "sim" if settings.simulation.enabled else "nvml"
    return settings.gpu.backend


def make_gpu_backend(settings: Settings, *, driver_root: str | None = None) -> GpuBackend:
    """The backend the settings ask for, not yet opened. ConfigError for a bad simulation profile/layout."""
    if backend_kind(settings) == "sim":
        from nodeagent.backends.sim.gpus import SimGpuBackend

        sim = settings.simulation
        return SimGpuBackend(
            sim.profile,
            sim.count,
            sim.seed,
            mig_layout=sim.mig_layout,
            call_timeout_s=settings.gpu.call_timeout_s,
        )
    from nodeagent.backends.nvml import NvmlBackend

    return NvmlBackend(call_timeout_s=settings.gpu.call_timeout_s, driver_root=driver_root)


async def open_gpu_backend(settings: Settings, *, driver_root: str | None = None) -> GpuBackend:
    """Make the backend and open it. Raises BackendUnavailable (with the reason) or ConfigError."""
    backend = make_gpu_backend(settings, driver_root=driver_root)
    try:
        await backend.open()
    except BaseException:
        await backend.close()
        raise
    return backend


@dataclass(frozen=True)
class DriverProbe:
    present: bool
    library: str
    """The libnvidia-ml.so.1 that loaded (a path, or the bare name when the system loader found it)."""
    reason: str
    """Why no driver is seen (empty when present)."""


def probe_driver(driver_root: str | None = None, *, load_library: Callable[[str], Any] = ctypes.CDLL) -> DriverProbe:
    """Whether an NVIDIA driver appears present: libnvidia-ml.so.1 loads from ``driver_root`` (a path in
    the agent's own filesystem), or else through the system loader or one of the well-known driver roots.
    Loads the library but does not initialise NVML."""
    from nodeagent.backends.nvml import LIBRARY, WELL_KNOWN_DRIVER_ROOTS, find_nvml_library

    candidates: list[str] = []
    if driver_root:
        found = find_nvml_library(driver_root)
        if found is None:
            return DriverProbe(False, "", f"no {LIBRARY} under the driver root {driver_root}")
        candidates.append(str(found))
    else:
        candidates.append(LIBRARY)
        for root in WELL_KNOWN_DRIVER_ROOTS:
            found = find_nvml_library(root)
            if found is not None:
                candidates.append(str(found))
    errors = []
    for candidate in candidates:
        try:
            load_library(candidate)
        except OSError as err:
            errors.append(f"{candidate}: {err}")
            continue
        return DriverProbe(True, candidate, "")
    return DriverProbe(False, "", f"no NVIDIA driver found ({LIBRARY} cannot be loaded: {'; '.join(errors)})")


class NoGpuBackend:
    """Stands in when only GPU-free subsystems run (e.g. `apply --only runtime` before a driver exists)."""

    kind = "none"

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def inventory(self) -> Inventory:
        return Inventory(backend=self.kind, driver_version="", nvml_version="", cuda_driver_version=0)

    async def sample(self, request: SampleRequest) -> Sample:
        return Sample(taken_at=time.time(), gpus={})
