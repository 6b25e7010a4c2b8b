"""The devices the DRA plugin publishes (pure): the GPU inventory → ``resource.k8s.io/v1`` devices with the
names, attributes and capacities NVIDIA's DRA driver (``gpu.nvidia.com``) publishes, so DeviceClasses and CEL
selectors written for it select the same devices here.

- A whole GPU is ``gpu-<minor>``; a MIG device ``gpu-<parent minor>-mig-<profile>-<profile id>-<placement
  start>`` (the profile without dots, RFC 1123: ``1g10gb``, ``1g10gb-me``).
- Attributes (in the driver's domain unless qualified): ``type`` (``gpu``/``mig``), ``uuid``, ``productName``,
  ``brand``, ``architecture``, ``cudaComputeCapability``, ``driverVersion``, ``cudaDriverVersion`` (versions, as
  semver), ``resource.kubernetes.io/pciBusID``, ``resource.kubernetes.io/pcieRoot`` (when known), the NUMA node
  as ``resource.kubernetes.io/numaNode`` (an int, 1.34 has no list values); MIG devices add ``profile`` and
  ``parentUUID``.
- Capacities: ``memory`` (bytes); MIG devices add ``multiprocessors`` and the engine counts where the GPU
  model is known (``nodeagent/model/catalog.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nodeagent.model import catalog
from nodeagent.model.gpu import GpuInfo, Inventory, MigDevice

DRIVER = "gpu.nvidia.com"
STANDARD = "resource.kubernetes.io/"
PCI_BUS_ID = STANDARD + "pciBusID"
PCIE_ROOT = STANDARD + "pcieRoot"
NUMA_NODE = STANDARD + "numaNode"
_NOT_RFC1123 = re.compile(r"[^a-z0-9-.]")

Attribute = Mapping[str, Any]
"""One attribute as the API spells it: ``{"string": ...}``, ``{"int": ...}``, ``{"version": ...}``."""


@dataclass(frozen=True)
class PublishedDevice:
    name: str
    kind: str
    """``gpu`` or ``mig``."""
    uuid: str
    gpu_index: int
    attributes: Mapping[str, Attribute] = field(default_factory=dict)
    capacity: Mapping[str, int] = field(default_factory=dict)
    """Name → value (bytes for memory)."""
    gpu_instance_id: int | None = None
    """A MIG device's GPU instance (an XID naming it taints this device only)."""
    taints: tuple[Mapping[str, str], ...] = ()
    """Device taints (``health.py``), as the API spells them."""
    consumes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Counter set → the counters it consumes (a dynamic MIG placement, ``partitions.py``)."""
    placement: tuple[str, int] | None = None
    """A dynamic MIG placement's (GPU-instance profile, start slice): preparing it creates that instance."""

    def api(self) -> dict[str, Any]:
        """The device as a ResourceSlice lists it."""
        out: dict[str, Any] = {
            "name": self.name,
            "attributes": {k: dict(v) for k, v in sorted(self.attributes.items())},
            "capacity": {k: {"value": str(v)} for k, v in sorted(self.capacity.items())},
        }
        if self.consumes:
            out["consumesCounters"] = [
                {"counterSet": name, "counters": {k: {"value": str(v)} for k, v in sorted(counters.items())}}
                for name, counters in sorted(self.consumes.items())
            ]
        if self.taints:
            out["taints"] = [dict(t) for t in self.taints]
        return out


def semver(version: str) -> str:
    """A dotted version as semver (``550.54`` → ``550.54.0``, ``535.104.05`` → ``535.104.5``); '' when not numeric."""
    parts = version.strip().split(".")
    if not parts or not all(p.isdigit() for p in parts):
        return ""
    numbers = [int(p) for p in parts[:3]] + [0] * (3 - min(len(parts), 3))
    return ".".join(str(n) for n in numbers)


def cuda_version(encoded: int) -> str:
    """NVML's CUDA driver version (``12040``) as semver (``12.4.0``)."""
    return f"{encoded // 1000}.{encoded % 1000 // 10}.0"


def mig_profile_part(profile: str) -> str:
    """A MIG profile as it appears in a device name (``1g.10gb+me`` → ``1g10gb-me``)."""
    name = _NOT_RFC1123.sub("-", profile.replace(".", "").lower()).strip("-")
    return name.removesuffix(".")


def gpu_name(gpu: GpuInfo) -> str:
    return f"gpu-{gpu.minor_number}"


def mig_name(parent: GpuInfo, mig: MigDevice, profile_id: int) -> str:
    return placement_name(parent, mig.profile, profile_id, mig.placement_start)


def placement_name(parent: GpuInfo, profile: str, profile_id: int, start: int) -> str:
    """The device of one MIG placement: ``gpu-0-mig-3g40gb-9-4`` (3g.40gb, profile id 9, at slice 4), the same
    whether its instance exists already (static MIG) or is created when a claim gets it (dynamic MIG)."""
    return f"gpu-{parent.minor_number}-mig-{mig_profile_part(profile)}-{profile_id}-{start}"


def mig_attributes(parent: GpuInfo, profile: str, common: Mapping[str, Attribute]) -> dict[str, Attribute]:
    """A MIG device's attributes beside ``common`` (no ``uuid``: ``mig_device`` adds it for an instance)."""
    return {"type": {"string": "mig"}, "parentUUID": {"string": parent.uuid}, "profile": {"string": profile}} | dict(
        common
    )


def common_attributes(gpu: GpuInfo, inventory: Inventory, pcie_roots: Mapping[str, str]) -> dict[str, Attribute]:
    """The attributes every device of ``gpu`` has (its model, versions, PCI address, NUMA node)."""
    return _common(gpu, inventory, pcie_roots)


def profile_ids(gpu: GpuInfo, inventory: Inventory) -> dict[str, int]:
    """GPU-instance profile name → NVML profile id for ``gpu``'s model."""
    known = (*(catalog.known_mig_profiles(gpu.name) or ()), *inventory.mig_profiles.get(gpu.name, ()))
    return {p.name: p.profile_id for p in known}


def mig_device(gpu: GpuInfo, inventory: Inventory, mig: MigDevice, common: Mapping[str, Attribute]) -> PublishedDevice:
    """One existing MIG device (static MIG)."""
    gi_profile = mig.profile.split(".", 1)[1] if mig.profile.count(".") > 1 else mig.profile
    capacities = catalog.known_mig_capacities(gpu.name)
    return PublishedDevice(
        mig_name(gpu, mig, profile_ids(gpu, inventory).get(gi_profile, 0)),
        "mig",
        mig.uuid,
        gpu.index,
        {"uuid": {"string": mig.uuid}} | mig_attributes(gpu, mig.profile, common),
        {"memory": mig.memory_total_mib * 1024 * 1024} | capacities.get(gi_profile, {}),
        mig.gpu_instance_id,
    )


def gpu_device(gpu: GpuInfo, common: Mapping[str, Attribute]) -> PublishedDevice:
    """A whole GPU."""
    return PublishedDevice(
        gpu_name(gpu),
        "gpu",
        gpu.uuid,
        gpu.index,
        {"type": {"string": "gpu"}, "uuid": {"string": gpu.uuid}} | dict(common),
        {"memory": gpu.memory_total_mib * 1024 * 1024},
    )


def _common(gpu: GpuInfo, inventory: Inventory, pcie_roots: Mapping[str, str]) -> dict[str, Attribute]:
    attrs: dict[str, Attribute] = {
        "productName": {"string": gpu.name},
        "brand": {"string": gpu.brand},
        "architecture": {"string": gpu.architecture},
        "cudaComputeCapability": {"version": f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}.0"},
        PCI_BUS_ID: {"string": pci_address(gpu.pci_bus_id)},
    }
    if driver := semver(inventory.driver_version):
        attrs["driverVersion"] = {"version": driver}
    if inventory.cuda_driver_version > 0:
        attrs["cudaDriverVersion"] = {"version": cuda_version(inventory.cuda_driver_version)}
    if root := pcie_roots.get(gpu.pci_bus_id):
        attrs[PCIE_ROOT] = {"string": root}
    if gpu.numa_node is not None and gpu.numa_node >= 0:
        attrs[NUMA_NODE] = {"int": gpu.numa_node}
    return attrs


def pci_address(nvml_bus_id: str) -> str:
    """NVML's bus id (``00000000:18:00.0``) as sysfs and Kubernetes spell it (``0000:18:00.0``), lower case."""
    domain, sep, rest = nvml_bus_id.partition(":")
    if not sep:
        return nvml_bus_id.lower()
    return f"{domain[-4:].rjust(4, '0')}:{rest}".lower()


def plan(inventory: Inventory, pcie_roots: Mapping[str, str] | None = None) -> tuple[PublishedDevice, ...]:
    """Every whole GPU without MIG mode and every MIG device of a GPU with it, in index order.
    ``pcie_roots``: NVML bus id → PCIe root (``pci0000:00``), read from sysfs by the caller."""
    roots = pcie_roots or {}
    found: list[PublishedDevice] = []
    for gpu in sorted(inventory.gpus, key=lambda g: g.index):
        common = _common(gpu, inventory, roots)
        if not gpu.mig_enabled:
            found.append(gpu_device(gpu, common))
            continue
        found.extend(mig_device(gpu, inventory, m, common) for m in sorted(gpu.mig_devices, key=lambda m: m.mig_index))
    return tuple(found)


def by_name(devices: tuple[PublishedDevice, ...]) -> dict[str, PublishedDevice]:
    return {d.name: d for d in devices}
