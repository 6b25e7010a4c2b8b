"""Allocate and GetPreferredAllocation answers (pure: the CDI spec's device names are passed in).

Allocate names each container's devices the ways ``device_list_strategy`` says: CDI device names (``cdi-cri``,
the kubelet's ``cdi_devices`` field, which containerd and CRI-O inject from the spec), ``NVIDIA_VISIBLE_DEVICES``
(``envvar``), or CDI annotations (``cdi-annotations``). Every CDI name must be in the agent's own CDI spec;
a device it does not name, an unknown or unhealthy device, or (``failRequestsGreaterThanOne``) more than one
replica of a shared resource refuses the whole request: never a half-answer.

Preferred allocation (GetPreferredAllocation) is ``preferred.py``: NVLink- and PCIe-aware best effort.
"""

from __future__ import annotations

from collections.abc import Collection

from nodeagent.backends.deviceplugin_server import AllocationRefused, ContainerAllocation
from nodeagent.deviceplugin import preferred as _preferred
from nodeagent.deviceplugin.resources import PlannedResource, Unit

ENVVAR = "NVIDIA_VISIBLE_DEVICES"
ANNOTATION_PREFIX = "cdi.k8s.io/nodeagent-device-plugin_"


def cdi_name(kind: str, unit: Unit) -> str:
    """The unit's fully-qualified CDI name: the spec names each device by index and by UUID; the UUID is used."""
    return f"{kind}={unit.uuid}"


def units_for(resource: PlannedResource, device_ids: tuple[str, ...], *, fail_greater_than_one: bool) -> list[Unit]:
    if not device_ids:
        raise AllocationRefused(f"{resource.name}: the request names no device")
    if fail_greater_than_one and resource.shared and len(device_ids) > 1:
        raise AllocationRefused(
            f"request for '{resource.name}: {len(device_ids)}' too large: maximum request size for shared "
            "resources is 1 (failRequestsGreaterThanOne)"
        )
    units: list[Unit] = []
    for device_id in device_ids:
        device = resource.device(device_id)
        if device is None:
            raise AllocationRefused(f"{resource.name}: unknown device {device_id!r}")
        if not device.healthy:
            raise AllocationRefused(f"{resource.name}: device {device_id!r} is unhealthy")
        if device.unit not in units:
            units.append(device.unit)
    return units


def answer(
    resource: PlannedResource,
    device_ids: tuple[str, ...],
    *,
    strategies: Collection[str],
    cdi_kind: str,
    cdi_names: frozenset[str] | None,
    cdi_source: str,
    id_strategy: str = "uuid",
    fail_greater_than_one: bool = False,
) -> ContainerAllocation:
    units = units_for(resource, device_ids, fail_greater_than_one=fail_greater_than_one)
    names = tuple(cdi_name(cdi_kind, u) for u in units)
    if "cdi-cri" in strategies or "cdi-annotations" in strategies:
        if cdi_names is None:
            raise AllocationRefused(f"{resource.name}: no CDI spec at {cdi_source} to name the devices from")
        missing = [n for n in names if n not in cdi_names]
        if missing:
            raise AllocationRefused(f"{resource.name}: the CDI spec {cdi_source} names no device {', '.join(missing)}")
    envs: dict[str, str] = {}
    annotations: dict[str, str] = {}
    if "envvar" in strategies:
        envs[ENVVAR] = ",".join(u.uuid if id_strategy == "uuid" else u.key for u in units)
    if "cdi-annotations" in strategies:
        suffix = resource.name.removeprefix("nvidia.com/").replace("/", "_")
        annotations[ANNOTATION_PREFIX + suffix] = ",".join(names)
    return ContainerAllocation(cdi_devices=names if "cdi-cri" in strategies else (), envs=envs, annotations=annotations)


def preferred(
    resource: PlannedResource, available: tuple[str, ...], must_include: tuple[str, ...], size: int
) -> tuple[str, ...]:
    """GetPreferredAllocation's answer (``preferred.preferred``: the link topology's best set)."""
    return _preferred.preferred(resource, available, must_include, size)
