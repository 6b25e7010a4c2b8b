"""MIG placement rules: where a GPU instance may sit and what may sit beside it. Pure; no I/O.

The rules (the real ones, checked on an H100): an instance occupies ``slices`` consecutive memory slices
starting at one of its profile's allowed ``starts``; instances never overlap; the compute slices of all
instances add up to at most the GPU's compute slices; a profile has at most ``max_count`` instances; at
most one instance with media extensions (``+me``) exists at a time. The simulator enforces them and the
MIG planner plans with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nodeagent.model.gpu import MigProfile
from nodeagent.model.mig_compute import ComputeProfile, compute_sizes
from nodeagent.model.mig_names import ProfileName


@dataclass(frozen=True)
class GpuProcess:
    """A process using a GPU (NVML's process lists, or a /dev/nvidia* file it holds open)."""

    pid: int
    name: str
    gpu_index: int
    gpu_instance_id: int | None = None
    """The GPU instance it runs on (MIG), when known."""
    used_memory_mib: int = 0


@dataclass(frozen=True)
class MigReadiness:
    """Payload of ``events.MIG_READY``: the desired MIG config and its state, as mig-manager's
    ``nvidia.com/mig.config.state`` (pending, rebooting, success, failed), with the reason."""

    config: str
    state: str
    reason: str = ""

    @property
    def ready(self) -> bool:
        return self.state == "success"


@dataclass(frozen=True)
class MigConfigRequest:
    """Payload of ``events.MIG_CONFIG_REQUESTED``: the config the Node's ``nvidia.com/mig.config`` label names
    (empty when the label is absent), as the labels subsystem sees it on the agent's own Node."""

    config: str
    source: str = "node label nvidia.com/mig.config"


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
    """Start slices for ``profiles`` (same order) that fit beside ``existing``, or None (see search_placement)."""
    return search_placement(profiles, existing, memory_slices=memory_slices, compute_slices=compute_slices)


def search_placement(
    wanted: Sequence[MigProfile],
    fixed: Sequence[tuple[MigProfile, int]] = (),
    *,
    memory_slices: int,
    compute_slices: int,
) -> list[int] | None:
    """Start slices for ``wanted`` (same order) beside the ``fixed`` instances, or None when none exist.

    Exact: every allowed start of every instance is tried (a depth-first search over memory-slice
    bitmasks), so a layout is refused only when no placement exists at all. Larger instances go first and
    instances of one profile take increasing starts (their order does not matter), which keeps the search
    small. The answer is deterministic: the lowest starts in that order."""
    if not wanted:
        return []
    if totals_problem(wanted, fixed, compute_slices=compute_slices, memory_slices=memory_slices):
        return None
    occupied = 0
    for p, s in fixed:
        occupied |= ((1 << p.slices) - 1) << s
    order = sorted(range(len(wanted)), key=lambda i: (-wanted[i].slices, -wanted[i].compute_slices, wanted[i].name, i))
    masks = [
        [(s, ((1 << wanted[i].slices) - 1) << s) for s in wanted[i].starts if s + wanted[i].slices <= memory_slices]
        for i in order
    ]
    same_as_previous = [k > 0 and wanted[order[k - 1]].name == wanted[order[k]].name for k in range(len(order))]
    chosen: list[int] = [0] * len(order)

    def search(k: int, used: int, min_start: int) -> bool:
        if k == len(order):
            return True
        for s, mask in masks[k]:
            if s < min_start or used & mask:
                continue
            chosen[k] = s
            nxt = k + 1
            if search(nxt, used | mask, s + 1 if nxt < len(order) and same_as_previous[nxt] else 0):
                return True
        return False

    if not search(0, occupied, 0):
        return None
    starts = [0] * len(wanted)
    for k, i in enumerate(order):
        starts[i] = chosen[k]
    return starts


def totals_problem(
    wanted: Sequence[MigProfile],
    fixed: Sequence[tuple[MigProfile, int]] = (),
    *,
    compute_slices: int,
    memory_slices: int,
) -> str | None:
    """Why ``wanted`` cannot join ``fixed`` whatever the placements (counts, media extensions, totals), or None."""
    every = [p for p, _ in fixed] + list(wanted)
    counts: dict[str, int] = {}
    for p in every:
        counts[p.name] = counts.get(p.name, 0) + 1
    for p in every:
        if counts[p.name] > p.max_count:
            return f"{counts[p.name]}x {p.name}: at most {p.max_count} instance(s) per GPU"
    media = [p.name for p in every if p.media_extensions]
    if len(media) > 1:
        return f"{' and '.join(media)}: only one instance with media extensions per GPU"
    compute = sum(p.compute_slices for p in every)
    if compute > compute_slices:
        return f"needs {compute} compute slices; the GPU has {compute_slices}"
    memory = sum(p.slices for p in every)
    if memory > memory_slices:
        return f"needs {memory} memory slices; the GPU has {memory_slices}"
    return None


def describe(profiles: Iterable[MigProfile]) -> str:
    """``4g.40gb + 2x2g.20gb`` (in the order first seen)."""
    counts: dict[str, int] = {}
    for p in profiles:
        counts[p.name] = counts.get(p.name, 0) + 1
    return " + ".join(name if n == 1 else f"{n}x{name}" for name, n in counts.items()) or "nothing"


def misfit_reason(
    wanted: Sequence[MigProfile],
    fixed: Sequence[tuple[MigProfile, int]] = (),
    *,
    memory_slices: int,
    compute_slices: int,
) -> str:
    """Why ``wanted`` cannot be placed beside ``fixed``, naming the smallest conflicting set of instances."""
    kw = {"memory_slices": memory_slices, "compute_slices": compute_slices}
    totals = totals_problem(wanted, fixed, **kw)
    if totals:
        return totals
    # Drop instances while the rest still conflicts: what is left is the conflict.
    core = list(wanted)
    i = 0
    while i < len(core):
        rest = core[:i] + core[i + 1 :]
        if rest and search_placement(rest, fixed, **kw) is None:
            core = rest
        else:
            i += 1
    rules = "; ".join(
        f"{p.name} only at {{{','.join(map(str, p.starts))}}}:{p.slices}" for p in {p.name: p for p in core}.values()
    )
    beside = f" beside {', '.join(f'{p.name} at {s}:{p.slices}' for p, s in fixed)}" if fixed else ""
    return f"{describe(core)} cannot be placed without overlap{beside} ({rules})"


@dataclass(frozen=True)
class MigTable:
    """A GPU model's GPU-instance profiles and its slice totals: everything placement needs."""

    profiles: tuple[MigProfile, ...]
    memory_slices: int
    compute_slices: int

    @classmethod
    def from_profiles(cls, profiles: Iterable[MigProfile]) -> MigTable:
        """Totals derived from the profiles themselves: the full-GPU profile spans them all."""
        ps = tuple(profiles)
        memory = max((s + p.slices for p in ps for s in p.starts), default=0)
        compute = max((p.compute_slices for p in ps), default=0)
        return cls(ps, memory, compute)

    def profile(self, name: str) -> MigProfile | None:
        for p in self.profiles:
            if p.name == name:
                return p
        return None

    def compute_profile(self, name: str) -> ComputeProfile | None:
        """What a mig-parted profile name means here: ``1g.10gb`` (a GPU instance and its one compute instance)
        or ``1c.3g.40gb`` (a 1-slice compute instance in a 3g.40gb); None when this GPU has no such GPU
        instance or no compute instance of that size in it."""
        try:
            parsed = ProfileName.parse(name)
        except ValueError:
            return None
        gi = self.profile(parsed.gpu_instance)
        if gi is None or parsed.compute not in compute_sizes(gi.compute_slices):
            return None
        return ComputeProfile(gi, parsed.compute if parsed.is_compute_instance else gi.compute_slices)

    def unknown_reason(self, name: str) -> str:
        """Why ``compute_profile(name)`` is None, for an error message."""
        try:
            parsed = ProfileName.parse(name)
        except ValueError as err:
            return str(err)
        gi = self.profile(parsed.gpu_instance)
        if gi is None:
            return f"no MIG profile {parsed.gpu_instance!r}"
        sizes = ", ".join(f"{n}c" for n in compute_sizes(gi.compute_slices))
        return f"a {gi.name} GPU instance has no {parsed.compute}-slice compute instance (it has {sizes})"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.profiles)
