"""Finding and loading libnvidia-ml.so.1, and NVML's initialisation errors as sentences a user can act on.

``probe_driver`` answers, without initialising NVML, whether a driver appears to be present (its
libnvidia-ml.so.1 can be loaded), so that ``nodeagent run`` on a machine without one can say so and hint at
``--simulate``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodeagent.backends.hostfs import Root
from nodeagent.errors import HostPathError

LIBRARY = "libnvidia-ml.so.1"
LIBRARY_DIRS = (
    "lib64",
    "lib",
    "lib/x86_64-linux-gnu",
    "lib/aarch64-linux-gnu",
    "usr/lib64",
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "usr/lib",
)
"""Where libnvidia-ml.so.1 is looked for under a driver root, in this order."""
WELL_KNOWN_DRIVER_ROOTS = ("/run/nvidia/driver", "/home/kubernetes/bin/nvidia", "/usr/local/nvidia")
"""Tried when the system loader cannot find the library and no driver root is set."""


def find_nvml_library(driver_root: str) -> Path | None:
    """libnvidia-ml.so.1 under a driver root (links followed inside the root only), or None."""
    root = Root(driver_root)
    for folder in LIBRARY_DIRS:
        try:
            path = root.resolve(f"/{folder}/{LIBRARY}")
        except HostPathError:
            continue
        if path.is_file():
            return path
    return None


def unavailable_reason(nv: Any, err: Any, *, library: str | None = None) -> str:
    """A sentence a user can act on, for an NVMLError raised by nvmlInit."""
    code = getattr(err, "value", None)
    where = f" ({library})" if library else ""
    if code == nv.NVML_ERROR_LIBRARY_NOT_FOUND:
        return (
            f"NVIDIA driver not found: NVML ({LIBRARY}) cannot be loaded{where}. Install the NVIDIA driver, or set "
            "driver.root to where it lives (e.g. /usr/local/nvidia or /run/nvidia/driver); "
            "to try the agent without a GPU, use --simulate"
        )
    if code == nv.NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        return (
            f"NVIDIA driver/library version mismatch: the user-space library{where} and the loaded nvidia kernel "
            "module are different versions, usually after a driver upgrade without a reboot. Reboot, or unload and "
            "reload the nvidia kernel modules, so that both match"
        )
    if code == nv.NVML_ERROR_DRIVER_NOT_LOADED:
        return (
            "the NVIDIA kernel module is not loaded (NVML: Driver Not Loaded). Load it (modprobe nvidia, or "
            "driver.load_modules = true) and check dmesg for why it failed"
        )
    if code == nv.NVML_ERROR_NO_PERMISSION:
        return "no permission to open /dev/nvidiactl or /dev/nvidia*: run the agent as root or grant it the devices"
    if code == nv.NVML_ERROR_FUNCTION_NOT_FOUND:
        return f"the NVIDIA driver's NVML{where} is older than nvidia-ml-py expects: upgrade the driver"
    return f"NVML initialisation failed{where}: {err}"


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
