"""GPU tests: they need an NVIDIA driver (nvidia-smi and libnvidia-ml.so.1) and always skip without one,
even under NODEAGENT_REQUIRE_INTEGRATION=1 (CI has no GPU)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from nodeagent.backends.gpu.nvml.library import probe_driver

DRIVER_ROOTS = ("/", "/usr/local/nvidia", "/run/nvidia/driver", "/home/kubernetes/bin/nvidia")


@dataclass(frozen=True)
class GpuDriver:
    nvidia_smi: str
    library: str
    """The libnvidia-ml.so.1 that loads."""
    root: str | None
    """The driver root to give the NVML backend (None: the system loader finds the library)."""

    def smi_env(self) -> dict[str, str]:
        """Environment for nvidia-smi, with the library's folder on the loader path."""
        env = dict(os.environ)
        if "/" in self.library:
            folder = str(Path(self.library).parent)
            env["LD_LIBRARY_PATH"] = ":".join(p for p in (folder, env.get("LD_LIBRARY_PATH", "")) if p)
        return env


def _find_smi() -> str | None:
    found = shutil.which("nvidia-smi")
    if found:
        return found
    for root in DRIVER_ROOTS[1:]:
        for sub in ("bin", "usr/bin"):
            candidate = Path(root, sub, "nvidia-smi")
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


@pytest.fixture(scope="session")
def gpu_driver() -> GpuDriver:
    smi = _find_smi()
    if smi is None:
        pytest.skip("no NVIDIA driver here (nvidia-smi not found)")
    probe = probe_driver()
    root: str | None = None
    if not probe.present:
        for candidate in DRIVER_ROOTS[1:]:
            probe = probe_driver(candidate)
            if probe.present:
                root = candidate
                break
    if not probe.present:
        pytest.skip(f"no NVIDIA driver here: {probe.reason}")
    if root is None and "/" in probe.library:
        # Found in a well-known driver root by the fallback: name that root explicitly.
        root = next((r for r in DRIVER_ROOTS[1:] if probe.library.startswith(r + "/")), None)
    return GpuDriver(nvidia_smi=smi, library=probe.library, root=root)
