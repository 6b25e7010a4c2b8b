"""MIG placement rules: where a GPU instance may sit and what may sit beside it. Pure; no I/O.

The rules (the real ones, checked on an H100): an instance occupies ``slices`` consecutive memory slices
starting at one of its profile's allowed ``starts``; instances never overlap; the compute slices of all
instances add up to at most the GPU's compute slices; a profile has at most ``max_count`` instances; at
most one instance with media extensions (``+me``) exists at a time. The simulator enforces them and the
MIG planner plans with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from nodeagent.model.gpu import MigProfile

Placement = tuple[int, int]
"""(start, size) in memory slices."""


def gpu_instance_id(start: int, size: int, memory_slices: int = 8) -> int:
    """The GPU-instance id the driver gives a placement: a heap index over the 8 memory slices
    (full GPU 0; halves 1-2; quarters 3-6; single slices 7-14), as ``nvidia-smi mig -lgi`` shows."""
    if memory_slices != 8:
        return start + 1
    level = {8: 0, 4: 1, 2: 3, 1: 7}.get(size)
    if level is None:
        return start + 1
    return level + start // size


def placement_problem(
    profile: MigProfile,
    start: int,
    existing: Iterable[tuple[MigProfile, int]],
    *,
    memory_slices: int,
    compute_slices: int,
) -> str | None:
    """Why ``profile`` cannot be placed at ``start`` next to ``existing`` instances, or None if it can."""
    existing = list(existing)
    if start not in profile.starts:
        allowed = ", ".join(str(s) for s in profile.starts)
        return f"{profile.name} cannot start at memory slice {start} (allowed starts: {allowed})"
    if start + profile.slices > memory_slices:
        return f"{profile.name} at {start} runs past the last memory slice"
    problem = count_problem(profile, existing)
    if problem:
        return problem
    end = start + profile.slices
    for p, s in existing:
        if start < s + p.slices and s < end:
            return f"{profile.name} at {start}:{profile.slices} overlaps {p.name} at {s}:{p.slices}"
    used = sum(p.compute_slices for p, _ in existing)
    if used + profile.compute_slices > compute_slices:
        return f"{profile.name} needs {profile.compute_slices} compute slice(s); only {compute_slices - used} free"
    return None


def count_problem(profile: MigProfile, existing: Iterable[tuple[MigProfile, int]]) -> str | None:
    """Why one more ``profile`` instance is not allowed whatever its placement, or None."""
    existing = list(existing)
    same = sum(1 for p, _ in existing if p.name == profile.name)
    if same >= profile.max_count:
        return f"{profile.name} allows at most {profile.max_count} instance(s) per GPU"
    if profile.media_extensions and any(p.media_extensions for p, _ in existing):
        return f"{profile.name}: only one instance with media extensions at a time"
    return None


def find_placement(
    profiles: Sequence[MigProfile],
    existing: Sequence[tuple[MigProfile, int]] = (),
    *,
    memory_slices: int,
    compute_slices: int,
) -> list[int] | None:
    """Start slices for ``profiles`` (same order) that fit beside ``existing``, or None.

    Larger instances are placed first, each at the lowest start that still lets the rest fit
    (a depth-first search: mig-parted tries permutations for the same reason)."""
    order = sorted(range(len(profiles)), key=lambda i: (-profiles[i].slices, -profiles[i].compute_slices, i))
    starts: dict[int, int] = {}
    placed = list(existing)

    def search(k: int) -> bool:
        if k == len(order):
            return True
        idx = order[k]
        prof = profiles[idx]
        for s in prof.starts:
            if placement_problem(prof, s, placed, memory_slices=memory_slices, compute_slices=compute_slices):
                continue
            placed.append((prof, s))
            starts[idx] = s
            if search(k + 1):
                return True
            placed.pop()
        return False

    if not search(0):
        return None
    return [starts[i] for i in range(len(profiles))]
