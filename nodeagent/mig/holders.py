"""Who uses a GPU before anything destructive happens to it.

Three sources, each cheap and read-only:

- NVML's process lists for the GPU (``MigControl.gpu_processes``), with the GPU instance for MIG;
- ``/proc/<pid>/fd/*`` entries open on ``/dev/nvidia<minor>`` (found through the Root, so a sandbox or the
  DaemonSet's ``/host`` works alike), for processes NVML does not list (another PID namespace, a stuck
  client); the agent's own process is skipped (its NVML use is paused during the change);
- the kubelet's pod-resources ``List``: pods that have the GPU (or one of its MIG devices) allocated, which is
  also how a process is named by its pod; without a kubelet the pod UID is taken from the process's cgroup.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from nodeagent.aio import run_blocking
from nodeagent.backends.hostfs import Root
from nodeagent.backends.podresources import ContainerDevices
from nodeagent.errors import HostPathError, NodeAgentError
from nodeagent.model.gpu import GpuInfo
from nodeagent.model.mig import GpuProcess

_DEV = re.compile(r"^/dev/nvidia(\d+)$")
_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


@dataclass(frozen=True)
class Holder:
    gpu_index: int
    source: str
    """``nvml``, ``/dev/nvidia<minor>`` or ``kubelet``."""
    pid: int | None = None
    command: str = ""
    gpu_instance_id: int | None = None
    pod: str = ""
    """``namespace/pod (container)`` from the kubelet, ``pod uid …`` from the cgroup, or empty."""

    def describe(self) -> str:
        who = f"pid {self.pid} ({self.command or '?'})" if self.pid is not None else ""
        if self.pod:
            who = f"{who} in {self.pod}" if who else self.pod
        where = f" on GI {self.gpu_instance_id}" if self.gpu_instance_id is not None else ""
        return f"{who}{where} [{self.source}]"


class ProcessLister(Protocol):
    async def gpu_processes(self, gpu_index: int) -> tuple[GpuProcess, ...]: ...


class PodLister(Protocol):
    async def list(self) -> tuple[ContainerDevices, ...]: ...


async def find_holders(
    gpus: Sequence[GpuInfo],
    *,
    root: Root,
    processes: ProcessLister | None = None,
    pods: PodLister | None = None,
    own_pid: int | None = None,
) -> dict[int, list[Holder]]:
    """Holders of each GPU (by index); GPUs nobody holds are absent."""
    own = os.getpid() if own_pid is None else own_pid
    by_minor = {g.minor_number: g.index for g in gpus}
    allocations: tuple[ContainerDevices, ...] = ()
    if pods is not None:
        try:
            allocations = await pods.list()
        except NodeAgentError:
            allocations = ()
    pod_of_device = _pods_by_device(allocations)
    found: dict[int, list[Holder]] = {}
    seen_pids: set[tuple[int, int]] = set()

    def pod_for(gpu: GpuInfo, gi: int | None) -> str:
        uuids = [gpu.uuid] + [d.uuid for d in gpu.mig_devices if gi is None or d.gpu_instance_id == gi]
        names = sorted({pod_of_device[u] for u in uuids if u in pod_of_device})
        return ", ".join(names)

    for gpu in gpus:
        if processes is None:
            break
        try:
            listed = await processes.gpu_processes(gpu.index)
        except NodeAgentError:
            continue
        for p in listed:
            if p.pid == own:
                continue
            seen_pids.add((gpu.index, p.pid))
            found.setdefault(gpu.index, []).append(
                Holder(gpu.index, "nvml", p.pid, p.name, p.gpu_instance_id, pod_for(gpu, p.gpu_instance_id))
            )
    for pid, minor, command, cgroup_pod in await run_blocking(_scan_proc, root, own):
        index = by_minor.get(minor)
        if index is None or (index, pid) in seen_pids:
            continue
        seen_pids.add((index, pid))
        gpu = next(g for g in gpus if g.index == index)
        pod = pod_for(gpu, None) or (f"pod uid {cgroup_pod}" if cgroup_pod else "")
        found.setdefault(index, []).append(Holder(index, f"/dev/nvidia{minor}", pid, command, None, pod))
    for gpu in gpus:
        for d in [None, *gpu.mig_devices]:
            uuid = gpu.uuid if d is None else d.uuid
            if uuid in pod_of_device:
                gi = None if d is None else d.gpu_instance_id
                holder = Holder(gpu.index, "kubelet", gpu_instance_id=gi, pod=pod_of_device[uuid])
                if holder not in found.get(gpu.index, []):
                    found.setdefault(gpu.index, []).append(holder)
    return found


def _pods_by_device(allocations: Iterable[ContainerDevices]) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in allocations:
        for device in c.device_ids:
            out[device] = f"{c.namespace}/{c.pod} ({c.container})"
    return out


def _scan_proc(root: Root, own_pid: int) -> list[tuple[int, int, str, str]]:
    """(pid, minor, command, pod uid from cgroup) for every fd open on /dev/nvidia<minor>."""
    out: list[tuple[int, int, str, str]] = []
    for entry in root.listdir("/proc"):
        if not entry.isdigit() or int(entry) == own_pid:
            continue
        minors: set[int] = set()
        for fd in root.listdir(f"/proc/{entry}/fd"):
            try:
                target = str(root.resolve(f"/proc/{entry}/fd/{fd}", follow_last=False).readlink())
            except (OSError, HostPathError):
                continue  # the process went away, or we may not look
            m = _DEV.match(target)
            if m:
                minors.add(int(m.group(1)))
        if not minors:
            continue
        command = _read(root, f"/proc/{entry}/comm").strip()
        cg = _POD_UID.search(_read(root, f"/proc/{entry}/cgroup"))
        pod_uid = cg.group(1).replace("_", "-") if cg else ""
        out.extend((int(entry), minor, command, pod_uid) for minor in sorted(minors))
    return out


def _read(root: Root, path: str) -> str:
    try:
        return root.read_text(path) or ""
    except HostPathError:
        return ""


def blocking(
    holders: Mapping[int, Sequence[Holder]], gpu: int, *, mode_change: bool, destroyed: Iterable[int]
) -> list[Holder]:
    """The holders that a change of this GPU would hurt: all of them for a mode change or reset; for
    destroying instances, those on a destroyed instance or on no known instance."""
    gone = set(destroyed)
    if not mode_change and not gone:
        return []
    return [h for h in holders.get(gpu, ()) if mode_change or h.gpu_instance_id is None or h.gpu_instance_id in gone]
