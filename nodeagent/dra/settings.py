"""The ``[dra]`` settings section (registered in ``nodeagent.settings``; docs in docs/configuration.md).

The kubelet's directories come from the shared ``[kubelet]`` section (``root_dir``); the per-claim CDI specs
go next to the agent's own (``cdi.spec_path``'s directory).
"""

from __future__ import annotations

from dataclasses import dataclass

from nodeagent.settings.sections import at_least, opt


@dataclass(frozen=True)
class DraSettings:
    enabled: bool = opt(
        False,
        "Serve GPUs through Dynamic Resource Allocation as driver `gpu.nvidia.com` (ResourceSlices, the kubelet's "
        "DRA plugin API) instead of the device plugin: set `deviceplugin.enabled = false` with it (both at once "
        "is refused, GpuServedTwice).",
    )
    claim_timeout_s: float = opt(
        10.0,
        "Timeout of reading one ResourceClaim from the API server in NodePrepareResources (the kubelet waits 45 s "
        "for the whole call).",
        check=at_least(0.1),
    )
