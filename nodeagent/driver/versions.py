"""Driver version policy: kernel module against libnvidia-ml, and a minimum version (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from nodeagent.errors import ConfigError

PROC_VERSION = "/proc/driver/nvidia/version"
SYS_VERSION = "/sys/module/nvidia/version"

_NVRM = re.compile(
    r"^NVRM version: NVIDIA UNIX (?P<open>Open )?Kernel Module(?: for \S+)?\s+(?P<v>\d+\.\d+(?:\.\d+)?)\s"
)
_PLAIN = re.compile(r"^\d+\.\d+(?:\.\d+)?$")

MISMATCH_CAUSE = (
    "usually the driver was upgraded while the old kernel module stayed loaded; "
    "reload the nvidia modules (or reboot the node) so both come from the same install"
)


@dataclass(frozen=True)
class KernelVersion:
    version: str
    open_modules: bool
    source: str


def parse_proc_version(text: str, source: str = PROC_VERSION) -> KernelVersion:
    """The first line of /proc/driver/nvidia/version, e.g.
    ``NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build ...``."""
    first = text.splitlines()[0] if text.strip() else ""
    m = _NVRM.match(first + " ")
    if m is None:
        raise ConfigError(f"no NVRM version in {first[:80]!r}", source=source, line=1)
    return KernelVersion(m.group("v"), m.group("open") is not None, source)


def parse_sys_version(text: str, source: str = SYS_VERSION) -> str:
    value = text.strip()
    if not _PLAIN.match(value):
        raise ConfigError(f"not a driver version: {value[:40]!r}", source=source, line=1)
    return value


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def nvml_library_version(nvml_version: str) -> str:
    """NVML reports ``13.580.159.04`` (CUDA major first); the driver part is what the library file carries."""
    parts = nvml_version.split(".")
    return ".".join(parts[1:]) if len(parts) == 4 else nvml_version


def mismatch_message(kernel: str, library: str) -> str:
    return f"driver/library version mismatch: kernel module {kernel}, libnvidia-ml {library}"


@dataclass(frozen=True)
class VersionCheck:
    kernel: str
    library: str
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_versions(kernel: str, library: str, *, min_version: str = "", sys_version: str = "") -> VersionCheck:
    """Named failures: kernel/library mismatch (with its usual cause), /proc vs /sys disagreement,
    older than the configured minimum."""
    problems: list[str] = []
    if sys_version and sys_version != kernel:
        problems.append(
            f"{PROC_VERSION} says {kernel} but {SYS_VERSION} says {sys_version}: a module reload is half done"
        )
    if library and library != kernel:
        problems.append(f"{mismatch_message(kernel, library)} ({MISMATCH_CAUSE})")
    if min_version and version_key(kernel) < version_key(min_version):
        problems.append(f"driver {kernel} is older than the minimum {min_version} (driver.min_version)")
    return VersionCheck(kernel, library, tuple(problems))
