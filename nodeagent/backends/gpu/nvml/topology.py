"""One GPU's links through NVML, on the worker thread inside the inventory's hop.

The PCIe common ancestor (``nvmlDeviceGetTopologyCommonAncestor``) with each lower-indexed GPU (the higher
one of a pair reads it, so each pair is asked once), and the GPU's NVLinks: each link's state
(``nvmlDeviceGetNvLinkState``), and for an active one whether its far end is an NVSwitch
(``nvmlDeviceGetNvLinkRemoteDeviceType``) or another GPU's PCI bus id (``nvmlDeviceGetNvLinkRemotePciInfo``).
NotSupported on link 0 means no NVLink (a PCIe board); GPU is lost on this GPU's own calls raises GpuLost
(the sweep marks the GPU lost, naming the call); a pair whose level cannot be read (the peer lost, an error)
is left unknown, never blamed on this GPU. Links are wiring: read once per GPU, again only while a pair is missing.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from nodeagent.backends.gpu.nvml.readers import CallOwner, Calls, text
from nodeagent.model.topology import GpuLinks, Level

_LEVELS = {int(level): level for level in Level}


def peer_handles(owner: CallOwner, c: Calls, handles: list[Any], index: int) -> dict[int, Any]:
    """Handles of the GPUs below ``index``; one that cannot be had (lost, an error) is left out."""
    nv = owner.nv
    out: dict[int, Any] = {}
    for other in range(index):
        h = handles[other]
        if h is None:
            try:
                h = c.hop.call("nvmlDeviceGetHandleByIndex", nv.nvmlDeviceGetHandleByIndex, other)
            except owner.nvml_error:
                continue
        out[other] = h
    return out


def levels(owner: CallOwner, c: Calls, h: Any, peers: dict[int, Any]) -> tuple[tuple[int, Level], ...]:
    nv = owner.nv
    fn = getattr(nv, "nvmlDeviceGetTopologyCommonAncestor", None)
    if fn is None:
        return ()
    out: list[tuple[int, Level]] = []
    for other, ph in sorted(peers.items()):
        try:
            value = c.hop.call("nvmlDeviceGetTopologyCommonAncestor", fn, h, ph)
        except owner.nvml_error:
            continue  # the peer may be the lost one: its own reads say so
        level = _LEVELS.get(int(value))
        if level is not None:
            out.append((other, level))
    return tuple(out)


def nvlinks(owner: CallOwner, c: Calls, h: Any) -> tuple[tuple[tuple[str, int], ...], int]:
    """(remote GPU bus id, active links) pairs and the active links to NVSwitches."""
    nv = owner.nv
    state_fn = getattr(nv, "nvmlDeviceGetNvLinkState", None)
    if state_fn is None:
        return (), 0
    type_fn = getattr(nv, "nvmlDeviceGetNvLinkRemoteDeviceType", None)
    switch_type = getattr(nv, "NVML_NVLINK_DEVICE_TYPE_SWITCH", 2)
    peers: Counter[str] = Counter()
    switch = 0
    for link in range(int(getattr(nv, "NVML_NVLINK_MAX_LINKS", 18))):
        state = c.opt("nvmlDeviceGetNvLinkState", state_fn, h, link)
        if state is None:
            if link == 0:
                break  # no NVLink on this GPU
            continue
        if int(state) != nv.NVML_FEATURE_ENABLED:
            continue
        kind = c.opt("nvmlDeviceGetNvLinkRemoteDeviceType", type_fn, h, link) if type_fn is not None else None
        if kind is not None and int(kind) == switch_type:
            switch += 1
            continue
        pci = c.opt("nvmlDeviceGetNvLinkRemotePciInfo", nv.nvmlDeviceGetNvLinkRemotePciInfo, h, link)
        if pci is not None:
            peers[text(pci.busId).upper()] += 1
    return tuple(sorted(peers.items())), switch


def read(owner: CallOwner, c: Calls, h: Any, handles: list[Any], index: int) -> tuple[GpuLinks, bool]:
    """GPU ``index``'s links, and whether every pair it is asked for was read (else read again later)."""
    peers = peer_handles(owner, c, handles, index)
    found = levels(owner, c, h, peers)
    nv_peers, switch = nvlinks(owner, c, h)
    return GpuLinks(levels=found, nvlink_peers=nv_peers, nvswitch_links=switch), len(found) == index
