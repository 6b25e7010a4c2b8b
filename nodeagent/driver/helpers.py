"""Whether the driver's helper daemons run: nvidia-persistenced, and the fabric manager on NVSwitch
systems. Read from /proc/<pid>/comm under the root (blocking); statuses only, nothing is restarted."""

from __future__ import annotations

from nodeagent.backends.hostfs import Root
from nodeagent.errors import HostPathError
from nodeagent.model.driver import HelperStatus

NVSWITCH_DEVICES = "/proc/driver/nvidia-nvswitch/devices"
COMM_LEN = 15
"""The kernel keeps 15 bytes of a process name in comm: nv-fabricmanager shows as nv-fabricmanage."""

PERSISTENCED = "nvidia-persistenced"
FABRIC_MANAGER = "nv-fabricmanager"


def running(root: Root) -> dict[str, list[int]]:
    """comm → pids of every process under /proc."""
    out: dict[str, list[int]] = {}
    for entry in root.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = root.read_text(f"/proc/{entry}/comm")
        except (HostPathError, OSError):
            continue  # the process ended between listing and reading
        if comm:
            out.setdefault(comm.strip(), []).append(int(entry))
    return out


def has_nvswitch(root: Root) -> bool:
    return bool(root.listdir(NVSWITCH_DEVICES))


def helper_statuses(root: Root) -> tuple[tuple[HelperStatus, ...], bool]:
    """(statuses, NVSwitch system?)."""
    procs = running(root)
    nvswitch = has_nvswitch(root)

    def status(name: str, needed: bool) -> HelperStatus:
        pids = tuple(sorted(procs.get(name[:COMM_LEN], [])))
        return HelperStatus(name, needed, bool(pids), pids)

    return (status(PERSISTENCED, True), status(FABRIC_MANAGER, nvswitch)), nvswitch
