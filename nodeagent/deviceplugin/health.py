"""Which GPUs and MIG devices the device plugin lists Unhealthy, from the GPU-state owner's events (pure: the
caller passes the clock). The book is ``gpuhealth.book``'s (shared with the DRA plugin's device taints), so
the classification is ``gpuhealth``'s, the one table (``gpuhealth.classify``:
NVIDIA's XID catalogue, ``gpuhealth.ignored_xids``; a GPU lost or NVML not answering), and so is the hold: an
XID keeps its device unhealthy for ``gpuhealth.xid_window_s``, and one that keeps failing stays unhealthy
until it has stayed healthy for the flapping hold (``gpuhealth.flapping``). Unlike NVIDIA's plugin, a device
comes back Healthy.

An XID that names a GPU instance (a MIG device's) counts for that instance only, as in NVIDIA's plugin; one
that names none, a lost GPU and NVML not answering count for the whole GPU and every MIG device on it.

``changes`` turns two verdicts into the Events about the Node that the subsystem records (Warning
``DevicePluginDeviceUnhealthy``, Normal ``DevicePluginDeviceHealthy``): one per device that changed, naming the
GPU (index, UUID), the resources and device IDs the kubelet sees, and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nodeagent.deviceplugin.resources import Advertised
from nodeagent.gpuhealth.book import HealthBook, Key, Verdicts

__all__ = ["HealthBook", "HealthChange", "Key", "Verdicts", "changes"]

UNHEALTHY_REASON = "DevicePluginDeviceUnhealthy"
HEALTHY_REASON = "DevicePluginDeviceHealthy"
NAMED_DEVICES = 8
"""Device IDs an Event names at most (the rest are counted)."""


@dataclass(frozen=True)
class HealthChange:
    """One device (a whole GPU, or a GPU instance's MIG device) turning Unhealthy or Healthy again: one Event."""

    kind: str
    """The Event's type: ``Warning`` (Unhealthy) or ``Normal`` (Healthy again)."""
    reason: str
    message: str


def _devices_of(advertised: Advertised, gpu: int, gi: int | None) -> list[str]:
    """``<resource> <id>, ...`` of the devices listed for a GPU (all of them) or one of its GPU instances."""
    out: list[str] = []
    for r in advertised.resources:
        ids = [d.id for d in r.devices if d.unit.gpu_index == gpu and (gi is None or d.unit.gpu_instance_id == gi)]
        if ids:
            shown = ids[:NAMED_DEVICES] + ([f"{len(ids) - NAMED_DEVICES} more"] if len(ids) > NAMED_DEVICES else [])
            out.append(f"{r.name} {', '.join(shown)}")
    return out


def _what(key: Key, uuids: Mapping[int, str], advertised: Advertised) -> str:
    gpu, gi = key
    uuid = uuids.get(gpu, "")
    name = f"GPU {gpu}" + (f" ({uuid})" if uuid else "") + (f" GPU instance {gi}" if gi is not None else "")
    devices = _devices_of(advertised, gpu, gi)
    return name + (f" [{'; '.join(devices)}]" if devices else " [no device listed]")


def changes(
    before: Mapping[Key, str], after: Mapping[Key, str], *, uuids: Mapping[int, str], advertised: Advertised
) -> list[HealthChange]:
    """The Events for verdicts that changed (pure). ``before``/``after``: (GPU index, GPU instance or None) →
    why it is unhealthy; ``advertised``: the plan after the change (which devices the kubelet sees for it).
    A device that stays unhealthy with another reason is no change: the hold (``evaluate``) already keeps a
    flapping GPU unhealthy, so a GPU that keeps failing gives one Event when it goes and one when it is back."""
    out: list[HealthChange] = []
    order = lambda k: (k[0], -1 if k[1] is None else k[1])  # noqa: E731
    for key in sorted(set(before) | set(after), key=order):
        if key in after and key not in before:
            message = f"{_what(key, uuids, advertised)} listed Unhealthy to the kubelet: {after[key]}"
            out.append(HealthChange("Warning", UNHEALTHY_REASON, message))
        elif key in before and key not in after:
            message = f"{_what(key, uuids, advertised)} listed Healthy again (was: {before[key]})"
            out.append(HealthChange("Normal", HEALTHY_REASON, message))
    return out
