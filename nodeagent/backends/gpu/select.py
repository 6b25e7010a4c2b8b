"""Pick and open the GPU backend from settings: the simulator or NVML.

``gpu.backend = "auto"`` means the simulator when simulation is on, else NVML. ``probe_driver`` answers,
without initialising NVML, whether a driver appears to be present (its libnvidia-ml.so.1 can be loaded),
so that ``nodeagent run`` on a machine without one can say so and hint at ``--simulate``.
"""

from __future__ import annotations

from nodeagent.backends.gpu.protocols import GpuBackend
from nodeagent.settings import Settings


def backend_kind(settings: Settings) -> str:
    """``sim`` or ``nvml``."""
    if settings.gpu.backend == "auto":
        return "sim" if settings.simulation.enabled else "nvml"
    return settings.gpu.backend


def make_gpu_backend(settings: Settings, *, driver_root: str | None = None) -> GpuBackend:
    """The backend the settings ask for, not yet opened. ConfigError for a bad simulation profile/layout."""
    if backend_kind(settings) == "sim":
        from nodeagent.backends.gpu.sim.backend import SimGpuBackend

        sim = settings.simulation
        return SimGpuBackend(
            sim.profile,
            sim.count,
            sim.seed,
            mig_layout=sim.mig_layout,
            call_timeout_s=settings.gpu.call_timeout_s,
        )
    from nodeagent.backends.gpu.nvml.backend import NvmlBackend

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
