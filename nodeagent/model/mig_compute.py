"""Compute instances inside a GPU instance: the sizes NVML offers, where they may start, exact layouts, and
packing compute instances onto the fewest GPU instances. Pure; no I/O."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.model.gpu import MigProfile

COMPUTE_SIZES = {1: (1,), 2: (1, 2), 3: (1, 2, 3), 4: (1, 2, 4), 7: (1, 2, 3, 4, 7)}
"""GPU-instance compute slices → the compute-instance sizes NVML offers inside it (``nvidia-smi mig -lcip``
on A100/H100: a 7-slice GPU instance has 1, 2, 3, 4 and 7-slice compute instances; a 4-slice one 1, 2
and 4; ...). Other sizes: 1-slice and whole-GPU-instance compute instances only."""

ComputePlacement = tuple[int, int]
"""(compute slices, start) of a compute instance inside its GPU instance."""


def compute_sizes(gi_compute: int) -> tuple[int, ...]:
    return COMPUTE_SIZES.get(gi_compute, tuple(sorted({1, gi_compute})))


def compute_starts(size: int, gi_compute: int) -> tuple[int, ...]:
    """Where a compute instance of ``size`` slices may start inside a GPU instance of ``gi_compute`` slices:
    at multiples of its alignment (the power of two at least its size), inside the GPU instance."""
    if size == gi_compute:
        return (0,)
    align = 1
    while align < size:
        align *= 2
    return tuple(range(0, gi_compute - size + 1, align))


@dataclass(frozen=True)
class ComputeProfile:
    """A compute-instance profile: ``slices`` compute slices inside a GPU instance of profile ``gi``."""

    gi: MigProfile
    slices: int

    @property
    def full(self) -> bool:
        return self.slices == self.gi.compute_slices

    @property
    def name(self) -> str:
        return self.gi.name if self.full else f"{self.slices}c.{self.gi.name}"

    @property
    def starts(self) -> tuple[int, ...]:
        return compute_starts(self.slices, self.gi.compute_slices)

    @property
    def max_count(self) -> int:
        """Most of them on one GPU: per GPU instance (one per allowed start) times the GPU instances."""
        return len(self.starts) * self.gi.max_count


def compute_layout(sizes: Sequence[int], gi_compute: int) -> tuple[ComputePlacement, ...] | None:
    """Starts for compute instances of ``sizes`` inside one GPU instance, or None when they do not fit.

    Exact (every allowed start is tried): ``3c + 2c + 2c`` in a 7-slice GPU instance fits only with the 3c
    at 4. The answer is (size, start) by start, the lowest starts in size order (largest first)."""
    return _compute_layout(tuple(sorted(sizes, reverse=True)), gi_compute)


@functools.lru_cache(maxsize=4096)
def _compute_layout(sizes: tuple[int, ...], gi_compute: int) -> tuple[ComputePlacement, ...] | None:
    if sum(sizes) > gi_compute:
        return None
    if any(s not in compute_sizes(gi_compute) for s in sizes):
        return None
    chosen: list[int] = []

    def search(k: int, used: int) -> bool:
        if k == len(sizes):
            return True
        size = sizes[k]
        low = chosen[k - 1] + 1 if k and sizes[k - 1] == size else 0
        for s in compute_starts(size, gi_compute):
            mask = ((1 << size) - 1) << s
            if s < low or used & mask:
                continue
            chosen.append(s)
            if search(k + 1, used | mask):
                return True
            chosen.pop()
        return False

    if not search(0, 0):
        return None
    return tuple(sorted(zip(sizes, chosen, strict=True), key=lambda p: (p[1], -p[0])))


def compute_problem(gi: MigProfile, compute: Sequence[ComputePlacement]) -> str | None:
    """Why compute instances (slices, start) cannot sit together in a ``gi`` GPU instance, or None."""
    width = gi.compute_slices
    used = 0
    for size, start in compute:
        if size not in compute_sizes(width):
            sizes = ", ".join(f"{n}c" for n in compute_sizes(width))
            return f"a {gi.name} GPU instance has no {size}-slice compute instance (it has {sizes})"
        starts = compute_starts(size, width)
        if start not in starts:
            allowed = ", ".join(map(str, starts))
            return (
                f"a {size}c compute instance cannot start at compute slice {start} of a {gi.name} (allowed: {allowed})"
            )
        mask = ((1 << size) - 1) << start
        if used & mask:
            return f"the {size}c compute instance at {start} overlaps another in the {gi.name}"
        used |= mask
    return None


def pack_compute(gi_compute: int, sizes: Sequence[int]) -> list[tuple[ComputePlacement, ...]] | None:
    """The fewest GPU instances (of ``gi_compute`` slices) that hold compute instances of ``sizes``, each with
    its compute-instance layout; None when some size does not exist in such a GPU instance.

    As mig-parted's apply reuses a GPU instance for the next compute instance of the same GPU-instance
    profile while it has room, compute instances share GPU instances; fewer GPU instances always place at
    least as easily, so the fewest is the layout to place. Deterministic."""
    if any(s not in compute_sizes(gi_compute) for s in sizes):
        return None
    items = sorted(sizes, reverse=True)
    if not items:
        return []
    lower = max(1, -(-sum(items) // gi_compute))
    for k in range(lower, len(items) + 1):
        bins: list[list[int]] = []
        if _fill(items, 0, bins, k, gi_compute):
            layouts = [compute_layout(b, gi_compute) for b in bins]
            return sorted((lay for lay in layouts if lay is not None), key=lambda lay: [(-s, st) for s, st in lay])
    return None  # unreachable: one compute instance per GPU instance always fits


def _fill(items: Sequence[int], i: int, bins: list[list[int]], k: int, gi_compute: int) -> bool:
    """Put ``items[i:]`` into at most ``k`` bins (GPU instances), each with a compute layout; depth first."""
    if i == len(items):
        return True
    tried: set[tuple[int, ...]] = set()
    for b in bins:
        if tuple(b) in tried:
            continue
        tried.add(tuple(b))
        if compute_layout([*b, items[i]], gi_compute) is not None:
            b.append(items[i])
            if _fill(items, i + 1, bins, k, gi_compute):
                return True
            b.pop()
    if len(bins) < k:
        bins.append([items[i]])
        if _fill(items, i + 1, bins, k, gi_compute):
            return True
        bins.pop()
    return False
