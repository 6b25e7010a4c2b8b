"""The ``[dra]`` settings section (registered in ``nodeagent.settings``; docs in docs/configuration.md).

The kubelet's directories come from the shared ``[kubelet]`` section (``root_dir``); the per-claim CDI specs
go next to the agent's own (``cdi.spec_path``'s directory).
"""

from __future__ import annotations

from dataclasses import dataclass

from nodeagent.settings.sections import at_least, opt

KUBELET_HEALTH_TIMEOUT_S = 30.0
"""The 1.34 kubelet reads a device Unknown when its plugin has not listed it for this long."""


def _resend(value: float) -> str | None:
    if value < 1.0:
        return "must be >= 1"
    if value >= KUBELET_HEALTH_TIMEOUT_S:
        return f"must be < {KUBELET_HEALTH_TIMEOUT_S:g} (the kubelet reads a device not listed for 30 s as Unknown)"
    return None


@dataclass(frozen=True)
class DraSettings:
    enabled: bool = opt(
        False,
        "Serve GPUs through Dynamic Resource Allocation as driver `gpu.nvidia.com` (ResourceSlices, the kubelet's "
        "DRA plugin API) instead of the device plugin: with `deviceplugin.enabled = false`, or with `gpus` naming "
        "the GPUs DRA serves (the device plugin serves the others); both serving every GPU is refused "
        "(GpuServedTwice).",
    )
    gpus: list[str] = opt(
        [],
        'The GPUs DRA serves, by index or UUID (e.g. ["0", "1"]); the device plugin, when enabled, leaves them '
        "out. Empty: every GPU.",
        check=lambda v: "must not name an empty GPU" if any(not g.strip() for g in v) else None,
    )
    dynamic_mig: bool = opt(
        False,
        "Dynamic MIG (KEP-4815 partitionable devices; Kubernetes 1.34 with the DRAPartitionableDevices gate): each "
        "MIG-enabled GPU is published as a counter set (its memory and compute slices) and one device per possible "
        "placement of every MIG profile (`gpu-0-mig-3g40gb-9-4`: 3g.40gb at memory slice 4); NodePrepareResources "
        "creates the GPU instance the scheduler picked, Unprepare destroys it. Instances in use stay as they are "
        "(their placements are left out). Needs the cdi subsystem (the claim's CDI spec names the new instance); "
        "refused with a `mig.config` (the MIG subsystem would rebuild the same GPUs), and a `nvidia.com/mig.config` "
        "Node label then fails by name (state `failed`, the layouts left as they are).",
    )
    claim_timeout_s: float = opt(
        10.0,
        "Timeout of reading one ResourceClaim from the API server in NodePrepareResources (the kubelet waits 45 s "
        "for the whole call); with `dynamic_mig` also of waiting for the CDI spec to name a new MIG instance.",
        check=at_least(0.1),
    )
    health_resend_s: float = opt(
        10.0,
        "How often the kubelet's DRAResourceHealth stream (gate ResourceHealthStatus) gets every device's health "
        "again without a change (a change goes at once); below the kubelet's 30 s, after which it reads a device "
        "not listed again as Unknown.",
        check=_resend,
    )
