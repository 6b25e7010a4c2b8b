"""Each published device's health for the kubelet's DRAResourceHealth stream (pure): the health book's verdicts
(``gpuhealth.book``, the same ones ``health.py`` turns into device taints) → Healthy, Unhealthy or Unknown, with
the reason (kept for /status: the 1.34 message has no field for it).

- The GPU lost (fallen off the bus): Unhealthy, on the GPU and every MIG device on it.
- A failing XID (or the flapping hold) on the GPU: Unhealthy on it and its MIG devices; one naming a GPU
  instance: Unhealthy on that MIG device only.
- NVML calls on the GPU hanging or failing, with no failing XID: Unknown (what the GPU is like cannot be read).
- Otherwise Healthy. Every device published is listed, in the order published.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nodeagent.backends.dra_health_server import DeviceHealth, Health
from nodeagent.dra.devices import PublishedDevice
from nodeagent.gpuhealth.book import Verdicts

LOST = "GPU lost (fallen off the bus)"


def device_health(device: PublishedDevice, verdicts: Verdicts) -> tuple[Health, str]:
    """The device's health now and why (empty when Healthy)."""
    index = device.gpu_index
    if index in verdicts.lost:
        return Health.UNHEALTHY, LOST
    if index in verdicts.gpus:
        if index in verdicts.degraded and not verdicts.xids.get((index, None)):
            return Health.UNKNOWN, verdicts.gpus[index]
        return Health.UNHEALTHY, verdicts.gpus[index]
    gi = device.gpu_instance_id
    if gi is not None and (index, gi) in verdicts.instances:
        return Health.UNHEALTHY, verdicts.instances[(index, gi)]
    return Health.HEALTHY, ""


def report(devices: Sequence[PublishedDevice], verdicts: Verdicts, *, pool: str, now: int) -> tuple[DeviceHealth, ...]:
    """Every device's health, determined at ``now`` (Unix seconds)."""
    out = []
    for device in devices:
        health, why = device_health(device, verdicts)
        out.append(DeviceHealth(pool, device.name, health, now, why))
    return tuple(out)


def summary(devices: Sequence[DeviceHealth]) -> Mapping[str, str]:
    """Device → ``Health: reason`` of the devices not Healthy (for /status)."""
    return {d.device: f"{d.health}: {d.reason}" for d in devices if d.health is not Health.HEALTHY}
