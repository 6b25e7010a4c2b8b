"""Finding a real NVIDIA driver for the GPU tests and benchmarks (they skip without one)."""

from __future__ import annotations

import shutil
from pathlib import Path


def nvidia_smi() -> str | None:
    """nvidia-smi on PATH or under a well-known driver root, or None."""
    found = shutil.which("nvidia-smi")
    if found:
        return found
    from nodeagent.backends.gpu.nvml.library import WELL_KNOWN_DRIVER_ROOTS

    for root in WELL_KNOWN_DRIVER_ROOTS:
        candidate = Path(root) / "bin/nvidia-smi"
        if candidate.is_file():
            return str(candidate)
    return None


def driver_present() -> bool:
    from nodeagent.backends.gpu.nvml.library import probe_driver

    return probe_driver().present and nvidia_smi() is not None
