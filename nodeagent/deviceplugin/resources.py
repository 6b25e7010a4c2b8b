"""Which resources the device plugin advertises, and which devices each one lists (pure: no clock, no I/O).

From the inventory, the MIG strategy (``labels.mig_strategy``, NVIDIA's ``none``, ``single``, ``mixed``), the
time-slicing and the health of each GPU:

- ``none``: every GPU with MIG disabled is one ``nvidia.com/gpu``; a MIG-enabled GPU is not advertised (its
  whole-GPU device would give a container no usable GPU), and that is reported;
- ``single``: when every GPU has MIG enabled with instances of one profile, each MIG device is one
  ``nvidia.com/gpu``; with no MIG-enabled GPU it is ``none``; anything else is an invalid configuration (the
  same rules and words as GFD's labels) and ``nvidia.com/gpu`` lists nothing;
- ``mixed``: GPUs with MIG disabled are ``nvidia.com/gpu``, each MIG device is ``nvidia.com/mig-<profile>``
  (NVIDIA's names: ``+`` in a profile is written ``.``, e.g. ``nvidia.com/mig-1g.10gb.me``); a MIG-enabled GPU
  without instances advertises nothing.

Device IDs are the UUID (default) or the index (``0``; MIG ``<gpu>:<mig index>``, the CDI spec's names);
under time-slicing each of a device's replicas is ``<id>::<n>``. A device of a GPU that is unhealthy is listed
``Unhealthy`` (the kubelet stops counting it), never dropped, so a lost GPU lowers allocatable by its own share;
an XID naming a GPU instance lowers it by that MIG device only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from nodeagent.model.gpu import GpuInfo, Inventory
from nodeagent.model.topology import Topology

GPU_RESOURCE = "nvidia.com/gpu"
MIG_PREFIX = "nvidia.com/mig-"
SHARED_SUFFIX = ".shared"
MAX_ID_LENGTH = 63
SOCKET_PREFIX = "nodeagent-"
MIG_STRATEGIES = ("none", "single", "mixed")


def mig_resource(profile: str) -> str:
    """NVIDIA's resource name of a MIG profile: ``1g.10gb`` → ``nvidia.com/mig-1g.10gb``, ``+me`` → ``.me``."""
    return MIG_PREFIX + profile.replace("+", ".")


def socket_name(resource: str) -> str:
    """The socket a resource is served on, in the kubelet's device-plugins directory."""
    name = resource.removeprefix("nvidia.com/").replace("/", "_")
    return f"{SOCKET_PREFIX}{name}.sock"


@dataclass(frozen=True)
class Unit:
    """A thing a container gets: a whole GPU or one MIG device."""

    key: str
    """Its index name, as in the CDI spec: ``0`` or ``0:1``."""
    uuid: str
    gpu_index: int
    profile: str = ""
    """The MIG profile; empty for a whole GPU."""
    numa_node: int | None = None
    gpu_instance_id: int | None = None
    """The MIG device's GPU instance; None for a whole GPU."""


@dataclass(frozen=True)
class SharedResource:
    """Time-slicing of one resource (or every one, ``name`` empty): replicas per device."""

    replicas: int
    name: str = ""
    rename: str = ""
    """The resource name its replicas are advertised under; empty: the name itself, or ``<name>.shared``
    with ``rename_by_default``."""
    devices: tuple[str, ...] | None = None
    """Which devices (index names or UUIDs); None: all of them."""

    def covers(self, resource: str, unit: Unit) -> bool:
        if self.name and self.name != resource:
            return False
        return self.devices is None or unit.key in self.devices or unit.uuid in self.devices


@dataclass(frozen=True)
class TimeSlicing:
    resources: tuple[SharedResource, ...] = ()
    rename_by_default: bool = False
    fail_requests_greater_than_one: bool = False

    def replication(self, resource: str, unit: Unit) -> tuple[int, str]:
        """(replicas, advertised name) of a unit of ``resource``: an entry naming the device wins over one
        for all devices, a named resource over every resource."""
        matches = [s for s in self.resources if s.covers(resource, unit)]
        if not matches:
            return 1, resource
        best = min(matches, key=lambda s: (s.devices is None, not s.name))
        if best.replicas <= 1:
            return 1, resource
        if best.rename:
            return best.replicas, best.rename
        return best.replicas, resource + SHARED_SUFFIX if self.rename_by_default else resource


@dataclass(frozen=True)
class PlannedDevice:
    id: str
    """What the kubelet sees."""
    unit: Unit
    replica: int | None = None
    """Which replica under time-slicing; None when the device is not shared."""
    healthy: bool = True


@dataclass(frozen=True)
class PlannedResource:
    name: str
    devices: tuple[PlannedDevice, ...]
    shared: bool = False
    topology: Topology = field(default=Topology(), compare=False)
    """The node's GPU pairs (PCIe level, NVLinks), for GetPreferredAllocation."""

    @property
    def socket(self) -> str:
        return socket_name(self.name)

    def device(self, device_id: str) -> PlannedDevice | None:
        for d in self.devices:
            if d.id == device_id:
                return d
        return None


@dataclass(frozen=True)
class Advertised:
    resources: tuple[PlannedResource, ...]
    problems: tuple[str, ...] = ()

    def resource(self, name: str) -> PlannedResource | None:
        for r in self.resources:
            if r.name == name:
                return r
        return None

    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.resources)


def _gpu_unit(gpu: GpuInfo, numa: Mapping[int, int | None]) -> Unit:
    return Unit(str(gpu.index), gpu.uuid, gpu.index, numa_node=numa.get(gpu.index))


def _mig_units(gpu: GpuInfo, numa: Mapping[int, int | None]) -> list[Unit]:
    return [
        Unit(
            f"{gpu.index}:{m.mig_index}",
            m.uuid,
            gpu.index,
            profile=m.profile,
            numa_node=numa.get(gpu.index),
            gpu_instance_id=m.gpu_instance_id,
        )
        for m in sorted(gpu.mig_devices, key=lambda m: m.mig_index)
    ]


def invalid_single(gpus: tuple[GpuInfo, ...]) -> str | None:
    """Why the GPUs cannot be advertised under ``single`` (GFD's words), or None."""
    enabled = [g for g in gpus if g.mig_enabled]
    if not enabled:
        return None
    if any(not g.mig_devices for g in enabled):
        return "at least one MIG device is enabled but empty"
    if len(enabled) != len(gpus):
        return "devices with MIG enabled and disable detected"
    if len({m.profile.replace("+", ".") for g in enabled for m in g.mig_devices}) != 1:
        return "more than one MIG device type present on node"
    return None


def units_by_resource(
    inventory: Inventory, strategy: str, numa: Mapping[int, int | None]
) -> tuple[dict[str, list[Unit]], list[str]]:
    """Base resource name → its units (before time-slicing), and what could not be advertised."""
    if strategy not in MIG_STRATEGIES:
        raise ValueError(f"unknown MIG strategy {strategy!r}")
    gpus = tuple(sorted(inventory.gpus, key=lambda g: g.index))
    out: dict[str, list[Unit]] = {GPU_RESOURCE: []}
    problems: list[str] = []
    if strategy == "single" and any(g.mig_enabled for g in gpus):
        why = invalid_single(gpus)
        if why is not None:
            problems.append(f"invalid configuration for mig-strategy=single: {why}; {GPU_RESOURCE} lists nothing")
            return out, problems
        out[GPU_RESOURCE] = [u for g in gpus for u in _mig_units(g, numa)]
        return out, problems
    for gpu in gpus:
        if not gpu.mig_enabled:
            out[GPU_RESOURCE].append(_gpu_unit(gpu, numa))
        elif strategy == "none":
            problems.append(
                f"GPU {gpu.index} has MIG enabled: not advertised with mig strategy none (labels.mig_strategy)"
            )
        elif not gpu.mig_devices:
            problems.append(f"GPU {gpu.index} has MIG enabled and no MIG devices: it advertises nothing")
        else:
            for unit in _mig_units(gpu, numa):
                out.setdefault(mig_resource(unit.profile), []).append(unit)
    return out, problems


def plan(
    inventory: Inventory,
    *,
    strategy: str,
    id_strategy: str = "uuid",
    sharing: TimeSlicing = TimeSlicing(),
    unhealthy: Mapping[int, str] | None = None,
    unhealthy_instances: Mapping[tuple[int, int], str] | None = None,
    numa: Mapping[int, int | None] | None = None,
) -> Advertised:
    """Every resource to advertise and its devices. ``unhealthy``: GPU index → why (its MIG devices too);
    ``unhealthy_instances``: (GPU index, GPU-instance id) → why (that MIG device; a whole GPU with an unhealthy
    instance id is unhealthy too, as no MIG device stands between)."""
    unhealthy = unhealthy or {}
    sick_instances = unhealthy_instances or {}
    sick_gpus = {g for g, _ in sick_instances}
    by_base, problems = units_by_resource(inventory, strategy, numa or {})
    devices: dict[str, list[PlannedDevice]] = {}
    shared: set[str] = set()
    for base, units in by_base.items():
        devices.setdefault(base, [])
        for unit in units:
            replicas, name = sharing.replication(base, unit)
            ident = unit.uuid if id_strategy == "uuid" else unit.key
            if unit.gpu_instance_id is None:
                healthy = unit.gpu_index not in unhealthy and unit.gpu_index not in sick_gpus
            else:
                healthy = (
                    unit.gpu_index not in unhealthy and (unit.gpu_index, unit.gpu_instance_id) not in sick_instances
                )
            listed = devices.setdefault(name, [])
            ids: list[tuple[str, int | None]]
            if replicas > 1:
                shared.add(name)
                ids = [(f"{ident}::{n}", n) for n in range(replicas)]
            else:
                ids = [(ident, None)]
            for device_id, replica in ids:
                if len(device_id) > MAX_ID_LENGTH:
                    problems.append(f"device ID {device_id!r} is longer than {MAX_ID_LENGTH} characters: not listed")
                    continue
                listed.append(PlannedDevice(device_id, unit, replica, healthy))
    mixed_sharing = shared & {n for n, ds in devices.items() if any(d.replica is None for d in ds)}
    for name in sorted(mixed_sharing):
        problems.append(f"{name} lists shared and unshared devices (time-slicing covers only some of its GPUs)")
    resources = tuple(
        PlannedResource(name, tuple(devices[name]), shared=name in shared, topology=inventory.topology)
        for name in sorted(devices, key=lambda n: (n != GPU_RESOURCE, n))
    )
    return Advertised(resources, tuple(problems))
