"""GetPreferredAllocation: which devices to give a container, best effort from the link topology (pure).

Like NVIDIA's best-effort policy (go-gpuallocator), every pair of chosen devices scores its closeness: 100 per
NVLink between their GPUs (through NVSwitches too, which NVIDIA's policy does not count), plus 60 for one
board, 50 one PCIe switch, 40 several switches, 30 one host bridge, 20 one NUMA node, 10 across the CPUs
(NVML's common-ancestor levels; without a level, the NUMA nodes decide 20 or 10). Two MIG devices of one GPU
score above any link. The set with the highest sum wins; between equal sets, the one that takes least from
the devices left (the sum of its scores with them) wins, so a request is served from a group already broken
into and a whole NVLink island or NUMA node stays whole for a larger one; then the lowest GPU indexes.

The kubelet's ``must_include`` devices come first. Every other device must be in ``available`` and listed
healthy: a lost or unhealthy GPU is skipped and never fails the request. Replicas (time-slicing) go one per
GPU first: a second replica of a GPU only once every available GPU has one. Up to ``EXHAUSTIVE_LIMIT`` candidate
sets are all scored; beyond it (dozens of MIG devices) a greedy search from each GPU's first device picks.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence

from nodeagent.deviceplugin.resources import PlannedDevice, PlannedResource, Unit
from nodeagent.model.topology import Level, Topology

NVLINK_SCORE = 100
SAME_GPU_SCORE = 10_000
LEVEL_SCORES = {
    Level.INTERNAL: 60,
    Level.SINGLE: 50,
    Level.MULTIPLE: 40,
    Level.HOSTBRIDGE: 30,
    Level.NODE: 20,
    Level.SYSTEM: 10,
}
EXHAUSTIVE_LIMIT = 5000


def pair_score(topology: Topology, a: Unit, b: Unit) -> int:
    """How close two units are (higher is closer); see the module's words."""
    if a.gpu_index == b.gpu_index:
        return SAME_GPU_SCORE
    link = topology.link(a.gpu_index, b.gpu_index)
    level = link.level
    if level is None and a.numa_node is not None and b.numa_node is not None:
        level = Level.NODE if a.numa_node == b.numa_node else Level.SYSTEM
    return NVLINK_SCORE * link.nvlinks + (LEVEL_SCORES[level] if level is not None else 0)


class _Scores:
    """Pair scores of the candidate units, with the units already chosen and among themselves."""

    def __init__(self, topology: Topology, units: Sequence[Unit], chosen: Sequence[Unit]) -> None:
        by_gpu: dict[tuple[int, int], int] = {}

        def score(a: Unit, b: Unit) -> int:  # a GPU's units share its links and NUMA node
            key = (a.gpu_index, b.gpu_index)
            if key not in by_gpu:
                by_gpu[key] = pair_score(topology, a, b)
            return by_gpu[key]

        n = len(units)
        self.matrix = [[score(units[i], units[j]) if i != j else 0 for j in range(n)] for i in range(n)]
        self.with_chosen = [sum(score(u, c) for c in chosen) for u in units]
        self.total = [sum(row) for row in self.matrix]
        self.order = [(u.gpu_index, u.key) for u in units]

    def key(self, indexes: Iterable[int]) -> tuple[int, int, list[tuple[int, str]]]:
        """(minus the set's score, what it takes from the others, its order): the lowest wins."""
        picked = list(indexes)
        inner = sum(self.matrix[i][j] for i, j in itertools.combinations(picked, 2))
        score = inner + sum(self.with_chosen[i] for i in picked)
        taken = sum(self.total[i] for i in picked) - 2 * inner
        return -score, taken, sorted(self.order[i] for i in picked)


def _exhaustive(scores: _Scores, n: int, k: int) -> list[int]:
    return list(min(itertools.combinations(range(n), k), key=scores.key))


def _greedy(scores: _Scores, units: Sequence[Unit], k: int) -> list[int]:
    seeds: dict[int, int] = {}
    for i, u in enumerate(units):
        seeds.setdefault(u.gpu_index, i)  # devices of one GPU are alike to the search: one seed per GPU
    best: list[int] | None = None
    for seed in seeds.values():
        picked = [seed]
        gain = [scores.with_chosen[i] + scores.matrix[seed][i] for i in range(len(units))]
        while len(picked) < k:
            rest = [i for i in range(len(units)) if i not in picked]
            nxt = min(rest, key=lambda i: (-gain[i], scores.total[i], scores.order[i]))
            picked.append(nxt)
            row = scores.matrix[nxt]
            gain = [g + row[i] for i, g in enumerate(gain)]
        if best is None or scores.key(picked) < scores.key(best):
            best = picked
    return best or []


def _choose_units(topology: Topology, fresh: Sequence[Unit], chosen: Sequence[Unit], k: int) -> list[Unit]:
    """The ``k`` of ``fresh`` that go best with ``chosen``."""
    if k >= len(fresh):
        return list(fresh)
    scores = _Scores(topology, fresh, chosen)
    if math.comb(len(fresh), k) <= EXHAUSTIVE_LIMIT:
        picked = _exhaustive(scores, len(fresh), k)
    else:
        picked = _greedy(scores, fresh, k)
    return [fresh[i] for i in sorted(picked, key=lambda i: scores.order[i])]


def preferred(
    resource: PlannedResource, available: tuple[str, ...], must_include: tuple[str, ...], size: int
) -> tuple[str, ...]:
    """The device IDs to prefer, ``must_include`` first; fewer than ``size`` when no more can be had."""
    listed = {d.id: d for d in resource.devices}
    chosen: list[str] = []
    for device_id in must_include:
        if device_id in listed and device_id not in chosen and len(chosen) < size:
            chosen.append(device_id)
    pool: dict[str, list[PlannedDevice]] = {}
    units: dict[str, Unit] = {}
    seen = set(chosen)
    for device_id in available:
        d = listed.get(device_id)
        if d is None or not d.healthy or device_id in seen:
            continue
        seen.add(device_id)
        pool.setdefault(d.unit.key, []).append(d)
        units[d.unit.key] = d.unit
    need = size - len(chosen)
    if need <= 0 or not pool:
        return tuple(chosen)
    taken = [listed[i].unit for i in chosen]
    used = Counter(u.key for u in taken)
    fresh = [units[key] for key in pool if key not in used]
    picked = _choose_units(resource.topology, fresh, taken, min(need, len(fresh)))
    for u in picked:
        chosen.append(pool[u.key].pop(0).id)
        used[u.key] += 1
        taken.append(u)
    while len(chosen) < size:  # more than one replica of a GPU: the least used, closest to the chosen first
        left = [key for key, devices in pool.items() if devices]
        if not left:
            break

        def rank(key: str) -> tuple[int, int, int, str]:
            u = units[key]
            return (used[key], -sum(pair_score(resource.topology, u, t) for t in taken), u.gpu_index, key)

        key = min(left, key=rank)
        chosen.append(pool[key].pop(0).id)
        used[key] += 1
        taken.append(units[key])
    return tuple(chosen)
