"""GPU health as device taints on the ResourceSlice (pure): the health book's verdicts (``gpuhealth.book``,
the same one the device plugin reads) → the taints of each published device.

- A device whose GPU is lost: ``gpu.nvidia.com/gpu-lost`` (value ``true``).
- Otherwise a device unhealthy from an XID: ``gpu.nvidia.com/xid`` with the failing XIDs as the value
  (``79``, ``48_79``); while only the flapping hold keeps it unhealthy the value stays what it last was
  (``held`` when it never had one, e.g. NVML not answering).
- Both ``NoSchedule``: the scheduler allocates no new claim on the device, running pods keep it (no
  ``NoExecute`` eviction: a pod the agent cannot see fail is the operator's call).

An XID naming a GPU instance taints that MIG device only; a whole-GPU verdict taints the GPU and every MIG
device on it. ``timeAdded`` is the moment the taint first appeared (kept while it stays, so an unchanged
taint writes nothing: the API server would otherwise stamp its own time and the slice would differ).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, MutableMapping, Sequence

from nodeagent.dra.devices import DRIVER, PublishedDevice
from nodeagent.gpuhealth.book import Key, Verdicts

XID_TAINT = f"{DRIVER}/xid"
LOST_TAINT = f"{DRIVER}/gpu-lost"
EFFECT = "NoSchedule"
HELD = "held"


def _xid_value(key: Key, verdicts: Verdicts, last: MutableMapping[Key, str]) -> str:
    xids = verdicts.xids.get(key)
    if xids:
        last[key] = "_".join(str(x) for x in xids)
    return last.get(key, HELD)


def taints_of(device: PublishedDevice, verdicts: Verdicts, last: MutableMapping[Key, str]) -> list[tuple[str, str]]:
    """(key, value) of the device's taints now. ``last``: device key → the XID value it last had (updated)."""
    gpu: Key = (device.gpu_index, None)
    found: list[tuple[str, str]] = []
    if device.gpu_index in verdicts.lost:
        found.append((LOST_TAINT, "true"))
    elif device.gpu_index in verdicts.gpus:
        found.append((XID_TAINT, _xid_value(gpu, verdicts, last)))
    gi = device.gpu_instance_id
    if not found and gi is not None and (device.gpu_index, gi) in verdicts.instances:
        found.append((XID_TAINT, _xid_value((device.gpu_index, gi), verdicts, last)))
    return found


def apply(
    devices: Sequence[PublishedDevice],
    verdicts: Verdicts,
    *,
    now: str,
    added: MutableMapping[tuple[str, str, str], str],
    last: MutableMapping[Key, str],
) -> tuple[PublishedDevice, ...]:
    """The devices with their taints. ``now``: RFC 3339 time for a new taint; ``added``: (device, key, value)
    → timeAdded of the taints already published (updated: gone ones forgotten)."""
    out: list[PublishedDevice] = []
    seen: set[tuple[str, str, str]] = set()
    for device in devices:
        taints: list[Mapping[str, str]] = []
        for key, value in taints_of(device, verdicts, last):
            ident = (device.name, key, value)
            seen.add(ident)
            since = added.setdefault(ident, now)
            taints.append({"key": key, "value": value, "effect": EFFECT, "timeAdded": since})
        out.append(dataclasses.replace(device, taints=tuple(taints)))
    for ident in set(added) - seen:
        del added[ident]
    for gone in [k for k in last if k not in verdicts.instances and (k[1] is not None or k[0] not in verdicts.gpus)]:
        del last[gone]
    return tuple(out)


def summary(devices: Sequence[PublishedDevice]) -> Mapping[str, list[str]]:
    """Device → ``key=value:effect`` of its taints (for /status), tainted devices only."""
    return {d.name: [f"{t['key']}={t['value']}:{t['effect']}" for t in d.taints] for d in devices if d.taints}
