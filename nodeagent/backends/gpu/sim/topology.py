"""Where the simulated GPUs sit: NUMA nodes and the links between them, as the boards they model are built.

Two CPU sockets, the first half of the GPUs on NUMA node 0 and the rest on node 1. An NVLink model (the
profile's ``nvlink_links``: 18 on HGX H100/H200, 12 on HGX A100) is an HGX board: every GPU has all its links to
the NVSwitches, so every pair counts that many NVLinks. A PCIe model (L4, T4) has no NVLink; its GPUs sit two
behind one PCIe switch (``SINGLE``), then on one NUMA node (``NODE``) or across the sockets (``SYSTEM``).
"""

from __future__ import annotations

from nodeagent.model.topology import GpuLinks, Level


def numa_node(index: int, count: int) -> int:
    """Two sockets, half the GPUs each."""
    return index * 2 // count if count > 1 else 0


def level(a: int, b: int, count: int, *, nvswitch: bool) -> Level:
    if numa_node(a, count) != numa_node(b, count):
        return Level.SYSTEM
    if not nvswitch and a // 2 == b // 2:
        return Level.SINGLE
    return Level.NODE


def links(index: int, count: int, nvlink_links: int) -> GpuLinks:
    """GPU ``index``'s own view of its links on a node of ``count`` such GPUs."""
    nvswitch = nvlink_links > 0
    return GpuLinks(
        levels=tuple(
            (other, level(index, other, count, nvswitch=nvswitch)) for other in range(count) if other != index
        ),
        nvswitch_links=nvlink_links,
    )
