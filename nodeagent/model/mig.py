"""MIG placement rules: where a GPU instance may sit and what may sit beside it. Pure; no I/O.

The rules (the real ones, checked on an H100): an instance occupies ``slices`` consecutive memory slices
starting at one of its profile's allowed ``starts``; instances never overlap; the compute slices of all
instances add up to at most the GPU's compute slices; a profile has at most ``max_count`` instances; at
most one instance with media extensions (``+me``) exists at a time. The simulator enforces them and the
MIG planner plans with them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nodeagent.model.gpu import MigProfile


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


# ------------------------------------------------------------------------------------ profile names


@dataclass(frozen=True)
class ProfileName:
    """A MIG profile name as mig-parted and go-nvlib write it: ``[Nc.]Mg.Kgb[+attr,...|-attr,...]``.

    ``1g.10gb`` is a GPU-instance profile (its one compute instance spans it); ``1c.3g.20gb`` is a
    compute instance of 1 compute slice inside a ``3g.20gb`` GPU instance. ``7c.7g.40gb`` and ``7g.40gb``
    are the same profile (the canonical name drops ``Nc.`` when N is the GPU instance's size, as go-nvlib's
    ``String`` does). ``+me`` (media extensions) and ``-me`` (none) belong to the GPU instance:
    ``1c.1g.5gb+me`` is a 1-slice compute instance of a ``1g.5gb+me`` GPU instance."""

    compute: int
    """N: compute slices of the compute instance (M when the name has no ``Nc.``)."""
    gpu: int
    """M: compute slices of the GPU instance (the ``Mg``)."""
    memory_gb: int
    attributes: tuple[str, ...] = ()
    negated: bool = False
    """True for the ``-attr`` form (``1g.10gb-me``: a profile without media extensions)."""

    @classmethod
    def parse(cls, text: str) -> ProfileName:
        """ValueError with the reason when ``text`` is not a profile name (go-nvlib's rules)."""
        if not isinstance(text, str) or not text:
            raise ValueError("empty profile name")
        plus, minus = text.split("+", 1), text.split("-", 1)
        if len(plus) == 2 and len(minus) == 2:
            raise ValueError(f"{text!r} has both '+' and '-' attributes")
        head, attrs_text = text, None
        if len(plus) == 2:
            head, attrs_text = plus
        elif len(minus) == 2:
            head, attrs_text = minus
        fields = head.split(".")
        if len(fields) == 3:
            compute, gpu, gb = _field(fields[0], "c", text), _field(fields[1], "g", text), _field(fields[2], "gb", text)
        elif len(fields) == 2:
            gpu, gb = _field(fields[0], "g", text), _field(fields[1], "gb", text)
            compute = gpu
        else:
            raise ValueError(f"{text!r}: expected Mg.Kgb or Nc.Mg.Kgb (e.g. 1g.10gb, 1c.3g.20gb)")
        if compute < 1 or gpu < 1 or gb < 1:
            raise ValueError(f"{text!r}: slice counts and memory must be at least 1")
        if compute > gpu:
            raise ValueError(
                f"{text!r}: a compute instance ({compute}c) cannot be larger than its GPU instance ({gpu}g)"
            )
        attributes: tuple[str, ...] = ()
        if attrs_text is not None:
            attributes = _attributes(attrs_text, text)
        return cls(compute, gpu, gb, attributes, negated=attrs_text is not None and len(minus) == 2)

    @property
    def suffix(self) -> str:
        if not self.attributes:
            return ""
        return ("-" if self.negated else "+") + ",".join(self.attributes)

    @property
    def gpu_instance(self) -> str:
        """The GPU-instance profile's name: ``1c.1g.5gb+me`` → ``1g.5gb+me``."""
        return f"{self.gpu}g.{self.memory_gb}gb{self.suffix}"

    @property
    def is_compute_instance(self) -> bool:
        """True when it names a compute instance smaller than its GPU instance."""
        return self.compute != self.gpu

    def __str__(self) -> str:
        return self.gpu_instance if not self.is_compute_instance else f"{self.compute}c.{self.gpu_instance}"


def _field(text: str, unit: str, whole: str) -> int:
    if not text.endswith(unit) or not text[: -len(unit)].isdigit():
        raise ValueError(f"{whole!r}: expected a number followed by {unit!r}, got {text!r}")
    return int(text[: -len(unit)])


def _attributes(text: str, whole: str) -> tuple[str, ...]:
    attrs = text.split(",")
    seen: set[str] = set()
    for a in attrs:
        if not a:
            raise ValueError(f"{whole!r}: empty attribute")
        if a in seen:
            raise ValueError(f"{whole!r}: attribute {a!r} given twice")
        if a[0].isdigit() or a[0] == "." or a[-1] == ".":
            raise ValueError(f"{whole!r}: attribute {a!r} must not start with a digit or start/end with a dot")
        if not all(c.isascii() and (c.isalnum() or c == ".") for c in a):
            raise ValueError(f"{whole!r}: attribute {a!r} may hold only letters, digits and dots")
        seen.add(a)
    return tuple(attrs)


def canonical_name(name: str) -> str:
    """The canonical spelling of a profile name (``7c.7g.40gb`` → ``7g.40gb``); unparsable names unchanged."""
    try:
        return str(ProfileName.parse(name))
    except ValueError:
        return name


def gpu_instance_name(name: str) -> str:
    """The GPU-instance profile of a (compute-instance) profile name; unparsable names unchanged."""
    try:
        return ProfileName.parse(name).gpu_instance
    except ValueError:
        return name


# ----------------------------------------------------------------------------- compute instances

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
