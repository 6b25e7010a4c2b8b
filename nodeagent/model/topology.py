"""GPU-to-GPU link topology: how close two GPUs of a node are (PCIe and NVLink), the device plugin's input.

Each GPU reports its own view (``GpuLinks``, on ``GpuInfo.links``): the PCIe common ancestor it shares with
every other GPU (NVML's ``nvmlDeviceGetTopologyCommonAncestor`` levels), and its active NVLinks, counted per
remote end: another GPU's PCI bus id, or an NVSwitch. ``topology_of`` turns those views into one value per
GPU pair (``PairLink``): the PCIe level and the NVLinks between them, direct ones plus, when both sit on the
NVSwitch fabric, the links through it (the fewer of the two GPUs' switch links; an HGX H100 board has 18 on
every GPU, so every pair counts 18). Base types: no I/O, no imports from the rest of nodeagent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum


class Level(IntEnum):
    """NVML's ``nvmlGpuTopologyLevel_t`` (the same numbers): where two GPUs' PCIe paths meet; lower is closer."""

    INTERNAL = 0
    """The same board (a multi-GPU board)."""
    SINGLE = 10
    """Behind one PCIe switch."""
    MULTIPLE = 20
    """Behind several PCIe switches, no host bridge between them."""
    HOSTBRIDGE = 30
    """Under one host bridge."""
    NODE = 40
    """On one NUMA node (CPU), across host bridges."""
    SYSTEM = 50
    """Across the CPUs' interconnect."""


@dataclass(frozen=True)
class GpuLinks:
    """One GPU's own view of its links, as NVML answers them for that GPU."""

    levels: tuple[tuple[int, Level], ...] = ()
    """(other GPU's index, common ancestor) for each GPU the level was read for."""
    nvlink_peers: tuple[tuple[str, int], ...] = ()
    """(remote GPU's PCI bus id, NVML form, upper case; active NVLinks to it)."""
    nvswitch_links: int = 0
    """Active NVLinks to an NVSwitch."""


@dataclass(frozen=True)
class PairLink:
    """What connects two GPUs: their PCIe common ancestor (None: not known) and the NVLinks between them."""

    level: Level | None = None
    nvlinks: int = 0


@dataclass(frozen=True)
class Topology:
    """Every known GPU pair of a node; a pair not listed is not known."""

    pairs: Mapping[tuple[int, int], PairLink] = field(default_factory=dict)
    """(lower index, higher index) → their link."""

    def link(self, a: int, b: int) -> PairLink:
        return self.pairs.get((a, b) if a < b else (b, a), UNKNOWN)

    def __bool__(self) -> bool:
        return bool(self.pairs)


UNKNOWN = PairLink()


@dataclass(frozen=True)
class GpuEnds:
    """What ``topology_of`` needs of one GPU: its index, its PCI bus id and its own view of its links."""

    index: int
    pci_bus_id: str
    links: GpuLinks | None


def topology_of(gpus: Iterable[GpuEnds]) -> Topology:
    """One ``PairLink`` per pair of GPUs that reported links (both views merged; a level either side read)."""
    known = [g for g in gpus if g.links is not None]
    by_bus = {g.pci_bus_id.upper(): g.index for g in known if g.pci_bus_id}
    levels: dict[tuple[int, int], Level] = {}
    direct: dict[tuple[int, int], int] = {}
    switch = {g.index: g.links.nvswitch_links for g in known if g.links is not None}
    for g in known:
        assert g.links is not None
        for other, level in g.links.levels:
            if other != g.index:
                levels.setdefault(_key(g.index, other), level)
        for bus, count in g.links.nvlink_peers:
            peer = by_bus.get(bus.upper())
            if peer is not None and peer != g.index:
                key = _key(g.index, peer)
                direct[key] = max(direct.get(key, 0), count)  # both ends count the same links
    pairs: dict[tuple[int, int], PairLink] = {}
    indexes = sorted({g.index for g in known})
    for i, a in enumerate(indexes):
        for b in indexes[i + 1 :]:
            key = (a, b)
            through_switch = min(switch.get(a, 0), switch.get(b, 0))
            links = direct.get(key, 0) + through_switch
            common = levels.get(key)
            if common is not None or links:
                pairs[key] = PairLink(common, links)
    return Topology(pairs)


def pairs_of(links: Mapping[tuple[int, int], PairLink]) -> Topology:
    """A topology from pairs given in any order (for builders and tests)."""
    return Topology({_key(a, b): link for (a, b), link in links.items()})


def _key(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)
