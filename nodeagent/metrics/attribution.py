"""Pod attribution: which pod holds which GPU or MIG instance, from the kubelet's PodResources List.

Pure functions over the device ids the kubelet reports. The device plugin's ids take several forms, all
resolved against the inventory:

- a GPU UUID (``GPU-…``), the default;
- a MIG device UUID (``MIG-…``) → (GPU index, GPU-instance id);
- ``nvidia<minor>`` for plugins that use device names;
- GKE's ``nvidia<minor>/gi<id>`` (an optional ``/vgpu<n>`` suffix is ignored);
- any of these with a time-slicing replica suffix ``::<n>``, which is stripped.

Only resources ``nvidia.com/gpu`` and ``nvidia.com/mig-*`` count. When several pods share one device
(time-slicing), the first in (namespace, pod, container) order gets the labels, so the result does not
depend on the kubelet's ordering.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from nodeagent.backends.podresources import ContainerDevices
from nodeagent.metrics.series_labels import EntityKey, PodRef
from nodeagent.model.gpu import Inventory

GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
_GKE = re.compile(r"^nvidia(\d+)(?:/gi(\d+))?(?:/vgpu\d+)?$")


def wanted(resource_name: str) -> bool:
    return resource_name == GPU_RESOURCE or resource_name.startswith(MIG_RESOURCE_PREFIX)


def resolver(inventory: Inventory) -> dict[str, EntityKey]:
    """Every device id form the inventory can answer, mapped to its entity key."""
    ids: dict[str, EntityKey] = {}
    for gpu in inventory.gpus:
        ids[gpu.uuid] = gpu.index
        for mig in gpu.mig_devices:
            ids[mig.uuid] = (gpu.index, mig.gpu_instance_id)
    return ids


def resolve(device_id: str, ids: Mapping[str, EntityKey], inventory: Inventory) -> EntityKey | None:
    device_id = device_id.split("::", 1)[0]
    key = ids.get(device_id)
    if key is not None:
        return key
    match = _GKE.match(device_id)
    if match is None:
        return None
    minor = int(match.group(1))
    for gpu in inventory.gpus:
        if gpu.minor_number == minor:
            return gpu.index if match.group(2) is None else (gpu.index, int(match.group(2)))
    return None


def attribute(records: Iterable[ContainerDevices], inventory: Inventory) -> tuple[dict[EntityKey, PodRef], int]:
    """(entity key → pod, number of GPU device ids that matched nothing in the inventory)."""
    ids = resolver(inventory)
    pods: dict[EntityKey, PodRef] = {}
    unmatched = 0
    ordered = sorted(records, key=lambda r: (r.namespace, r.pod, r.container, r.resource_name))
    for rec in ordered:
        if not wanted(rec.resource_name):
            continue
        for device_id in rec.device_ids:
            key = resolve(device_id, ids, inventory)
            if key is None:
                unmatched += 1
                continue
            pods.setdefault(key, PodRef(pod=rec.pod, namespace=rec.namespace, container=rec.container))
    return pods, unmatched
