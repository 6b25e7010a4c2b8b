"""The MigControl of a GPU backend: the simulator is one itself; NVML gets NvmlMigControl beside it."""

from __future__ import annotations

from typing import Any

from nodeagent.backends.gpu.protocols import MigControl


def control_for(gpus: Any, *, driver_root: str | None = None) -> MigControl | None:
    """None for a backend that cannot change MIG layouts (no GPU)."""
    if isinstance(gpus, MigControl):
        return gpus
    from nodeagent.backends.gpu.nvml.backend import NvmlBackend

    if isinstance(gpus, NvmlBackend):
        from nodeagent.backends.gpu.nvml.mig import NvmlMigControl

        smi = "nvidia-smi"
        if driver_root and driver_root != "/":
            smi = driver_root.rstrip("/") + "/usr/bin/nvidia-smi"
        return NvmlMigControl(gpus, nvidia_smi=smi)
    return None
