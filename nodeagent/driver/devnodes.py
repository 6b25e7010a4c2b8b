"""Plan the NVIDIA device nodes from /proc/devices and /proc/driver/nvidia/{gpus,capabilities} (pure).

Majors come from /proc/devices (``nvidia``/``nvidia-frontend`` 195, ``nvidia-uvm``, ``nvidia-caps``), the
GPU minors from /proc/driver/nvidia/gpus/*/information ``Device Minor``, the nvidia-caps minors and
modes from the ``DeviceFileMinor`` / ``DeviceFileMode`` lines of each capability file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nodeagent.backends.chardevs import NodeState
from nodeagent.errors import ConfigError

PROC_DEVICES = "/proc/devices"
PROC_GPUS = "/proc/driver/nvidia/gpus"
CAPABILITIES = "/proc/driver/nvidia/capabilities"
FRONTEND_NAMES = ("nvidia-frontend", "nvidia", "nvidiactl")
CTL_MINOR = 255
MODESET_MINOR = 254


@dataclass(frozen=True)
class Capability:
    path: str
    """The capability file, e.g. /proc/driver/nvidia/capabilities/gpu0/mig/gi1/access."""
    minor: int
    mode: int


@dataclass(frozen=True)
class DevNode:
    path: str
    """Path below the dev root, e.g. /dev/nvidia-uvm."""
    major: int
    minor: int
    mode: int

    def describe(self) -> str:
        return f"{self.path} (char {self.major}:{self.minor}, mode {self.mode:o})"


def parse_proc_devices(text: str, source: str = PROC_DEVICES) -> dict[str, int]:
    """Character device majors by name; a malformed line raises ConfigError with its line number."""
    out: dict[str, int] = {}
    section = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.endswith(":"):
            section = stripped
            continue
        major, _, name = stripped.partition(" ")
        if not major.isdigit() or not name.strip() or not section:
            raise ConfigError(f"not a /proc/devices line: {line[:80]!r}", source=source, line=number)
        if section == "Character devices:":
            out.setdefault(name.strip(), int(major))
    return out


def parse_capability(text: str, source: str) -> Capability:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()
    try:
        return Capability(source, int(values["DeviceFileMinor"]), int(values.get("DeviceFileMode", "292")))
    except (KeyError, ValueError):
        raise ConfigError("no numeric DeviceFileMinor line", source=source) from None


def parse_gpu_minor(text: str, source: str) -> int:
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "Device Minor":
            if value.strip().isdigit():
                return int(value.strip())
            break
    raise ConfigError("no numeric 'Device Minor' line", source=source)


def frontend_major(majors: Mapping[str, int]) -> int | None:
    for name in FRONTEND_NAMES:
        if name in majors:
            return majors[name]
    return None


def wanted_nodes(
    majors: Mapping[str, int],
    gpu_minors: Sequence[int],
    capabilities: Sequence[Capability],
    *,
    modeset: bool,
) -> list[DevNode]:
    """Every NVIDIA device node the loaded driver offers."""
    nodes: list[DevNode] = []
    front = frontend_major(majors)
    if front is not None:
        nodes += [DevNode(f"/dev/nvidia{m}", front, m, 0o666) for m in sorted(gpu_minors)]
        nodes.append(DevNode("/dev/nvidiactl", front, CTL_MINOR, 0o666))
        if modeset:
            nodes.append(DevNode("/dev/nvidia-modeset", front, MODESET_MINOR, 0o666))
    if "nvidia-uvm" in majors:
        uvm = majors["nvidia-uvm"]
        nodes += [DevNode("/dev/nvidia-uvm", uvm, 0, 0o666), DevNode("/dev/nvidia-uvm-tools", uvm, 1, 0o666)]
    if "nvidia-caps" in majors:
        caps = majors["nvidia-caps"]
        for cap in sorted(capabilities, key=lambda c: c.minor):
            nodes.append(DevNode(f"/dev/nvidia-caps/nvidia-cap{cap.minor}", caps, cap.minor, cap.mode & 0o777))
    return nodes


def missing_nodes(wanted: Sequence[DevNode], existing: Mapping[str, NodeState | None]) -> list[DevNode]:
    """Nodes absent, or present with the wrong numbers (created again)."""
    out = []
    for node in wanted:
        state = existing.get(node.path)
        if state is None or (state.major, state.minor) != (node.major, node.minor):
            out.append(node)
    return out
