"""Which of this node's devices a ResourceClaim was allocated (pure): the kubelet names only the claim (UID,
namespace, name); its ``status.allocation.devices.results`` say which devices of which driver and pool the
scheduler chose. Ours are those of driver ``gpu.nvidia.com`` in this node's pool."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nodeagent.errors import NodeAgentError


class ClaimRefused(NodeAgentError):
    """A claim this plugin cannot prepare; the message is the kubelet's (and the pod's) error."""


@dataclass(frozen=True)
class Allocated:
    device: str
    requests: tuple[str, ...]


def allocated(
    claim: Mapping[str, Any] | None,
    *,
    uid: str,
    ref: str,
    driver: str,
    pool: str,
    known: frozenset[str],
) -> tuple[Allocated, ...]:
    """This plugin's devices in ``claim`` (``ref``: namespace/name, for messages), one entry per device with
    every request that got it. ClaimRefused when the claim is gone, was replaced (another UID), is not
    allocated, or names a device of ours this node does not publish."""
    if claim is None:
        raise ClaimRefused(f"ResourceClaim {ref} not found")
    got_uid = claim.get("metadata", {}).get("uid", "")
    if got_uid != uid:
        raise ClaimRefused(f"ResourceClaim {ref} has UID {got_uid}, the kubelet asked for {uid}")
    allocation = (claim.get("status") or {}).get("allocation")
    if not allocation:
        raise ClaimRefused(f"ResourceClaim {ref} is not allocated")
    results = (allocation.get("devices") or {}).get("results") or []
    requests: dict[str, list[str]] = {}
    for result in results:
        if result.get("driver") != driver or result.get("pool") != pool:
            continue
        device = str(result.get("device", ""))
        if device not in known:
            raise ClaimRefused(f"ResourceClaim {ref}: device {device} of pool {pool} is not published by this node")
        names = requests.setdefault(device, [])
        request = str(result.get("request", ""))
        if request and request not in names:
            names.append(request)
    if not requests:
        raise ClaimRefused(f"ResourceClaim {ref} has no device of driver {driver} in pool {pool}")
    return tuple(Allocated(d, tuple(r)) for d, r in requests.items())
