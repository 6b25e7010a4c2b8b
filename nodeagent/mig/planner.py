"""The MIG planner: from each GPU's current layout and its desired entry to the exact steps. Pure; no I/O.

Per GPU, in this order of preference:

1. the layout already matches (mode and instance counts): no step at all, every instance stays;
2. the target can be reached while keeping existing instances where they are: the largest such set of
   instances stays, only the difference is destroyed and created (each creation at an explicit start);
3. otherwise that GPU (only that GPU) is rebuilt: every instance destroyed, the target placed from scratch.

Placements are searched exactly (``model.mig.search_placement``), so ``3g.40gb + 2x2g.20gb`` is placed with
the 3g at slice 4, and a target that fits no placement is refused with a reason naming the conflict. Equal
inputs give equal plans.

Compute-instance profiles (``1c.3g.40gb``, ``3c.7g.80gb`` + ``4c.7g.80gb``): the compute instances of one
GPU-instance profile go into the fewest GPU instances of it that hold them, each laid out by the
compute-instance placement rules (``model.mig_compute``); those GPU instances are then placed as above. A GPU
instance stays only when it has the same compute instances at the same places; otherwise it is rebuilt.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from nodeagent.mig.config import GpuIdentity, MigConfig, MigEntry
from nodeagent.model.gpu import MigDevice, MigProfile
from nodeagent.model.mig import MigTable, describe, misfit_reason, search_placement
from nodeagent.model.mig_compute import ComputePlacement, pack_compute
from nodeagent.model.mig_names import ProfileName, canonical_name, gpu_instance_name


class Action(StrEnum):
    DESTROY = "destroy"
    SET_MODE = "set-mode"
    RESET = "reset"
    CREATE = "create"


@dataclass(frozen=True)
class Instance:
    """An existing GPU instance (with its compute instances) as the planner sees it."""

    gpu_instance_id: int
    profile: str
    """The GPU-instance profile (``3g.40gb``)."""
    start: int
    uuid: str = ""
    compute: tuple[ComputePlacement, ...] = ()
    """Its compute instances, (slices, start) by start; empty: one spanning it."""

    def label(self) -> str:
        uuid = f" {self.uuid}" if self.uuid else ""
        split = len(self.compute) > 1 or any(start for _, start in self.compute)
        cis = f", compute instances {_compute_text(self.compute)}" if split else ""
        return f"{self.profile} at {self.start} (GI {self.gpu_instance_id}{uuid}{cis})"

    def layout(self, table: MigTable) -> tuple[ComputePlacement, ...]:
        """Its compute instances, the spanning one written out."""
        if self.compute:
            return self.compute
        p = table.profile(self.profile)
        return ((p.compute_slices, 0),) if p is not None else ()

    def names(self, table: MigTable) -> list[str]:
        """The mig-parted profile name of each of its compute instances (``1c.3g.40gb``, or ``3g.40gb``)."""
        p = table.profile(self.profile)
        full = p.compute_slices if p is not None else None
        return [self.profile if size == full else f"{size}c.{self.profile}" for size, _ in self.layout(table)]


@dataclass(frozen=True)
class Target:
    """A GPU instance the target layout needs, with its compute instances."""

    gi: MigProfile
    compute: tuple[ComputePlacement, ...]

    @property
    def full(self) -> bool:
        """One compute instance spanning the GPU instance (what a plain ``3g.40gb`` asks for)."""
        return self.compute == ((self.gi.compute_slices, 0),)

    @property
    def key(self) -> tuple[str, tuple[ComputePlacement, ...]]:
        return self.gi.name, self.compute


def _compute_text(compute: Sequence[ComputePlacement]) -> str:
    return ", ".join(f"{size}c at {start}" for size, start in compute)


@dataclass(frozen=True)
class GpuMigLayout:
    """One GPU's MIG layout: its identity, MIG mode (current and pending) and GPU instances."""

    gpu: GpuIdentity
    mig_enabled: bool
    mig_pending: bool
    instances: tuple[Instance, ...] = ()

    @property
    def index(self) -> int:
        return self.gpu.index

    def counts(self) -> dict[str, int]:
        """Compute instances by their canonical mig-parted name (``1c.3g.40gb``; ``3g.40gb`` for a spanning one)."""
        out: dict[str, int] = {}
        for inst in self.instances:
            for name in inst.names(self.gpu.table):
                out[name] = out.get(name, 0) + 1
        return out


@dataclass(frozen=True)
class MigStep:
    action: Action
    gpu: int
    summary: str
    profile: str = ""
    start: int | None = None
    gpu_instance_id: int | None = None
    uuid: str = ""
    enabled: bool | None = None
    compute: tuple[ComputePlacement, ...] = ()
    """For a creation: the compute instances (slices, start) to create in the GPU instance; empty: one
    spanning it."""


@dataclass(frozen=True)
class GpuPlan:
    """What happens to one GPU."""

    gpu: int
    entry: MigEntry | None
    steps: tuple[MigStep, ...] = ()
    kept: tuple[Instance, ...] = ()
    """Existing instances that stay where they are (their MIG devices keep their UUIDs)."""
    error: str = ""
    rebuild: bool = False
    """True when no existing instance could be kept although some were there."""

    @property
    def mode_change(self) -> bool:
        return any(s.action in (Action.SET_MODE, Action.RESET) for s in self.steps)

    @property
    def destructive(self) -> bool:
        return any(s.action in (Action.DESTROY, Action.SET_MODE, Action.RESET) for s in self.steps)


@dataclass(frozen=True)
class NodePlan:
    config: str
    gpus: tuple[GpuPlan, ...] = ()
    unmatched: tuple[int, ...] = ()
    """GPUs no entry of the config matches: left as they are."""

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(f"GPU {g.gpu}: {g.error}" for g in self.gpus if g.error)

    @property
    def steps(self) -> tuple[MigStep, ...]:
        return tuple(s for g in self.gpus for s in g.steps)

    @property
    def empty(self) -> bool:
        return not self.steps and not self.errors


def instances_of(devices: Iterable[MigDevice]) -> tuple[Instance, ...]:
    """GPU instances from an inventory's MIG devices (one device per compute instance), with their compute
    instances."""
    by_gi: dict[int, list[MigDevice]] = {}
    for d in devices:
        by_gi.setdefault(d.gpu_instance_id, []).append(d)
    out = []
    for gi, ds in by_gi.items():
        ds.sort(key=lambda d: (d.compute_start, d.compute_instance_id))
        compute: list[ComputePlacement] = []
        for d in ds:
            try:
                parsed = ProfileName.parse(d.profile)
            except ValueError:
                compute = []
                break
            compute.append((parsed.compute, d.compute_start))
        first = ds[0]
        out.append(Instance(gi, gpu_instance_name(first.profile), first.placement_start, first.uuid, tuple(compute)))
    return tuple(sorted(out, key=lambda i: (i.start, i.gpu_instance_id)))


def targets_for(entry: MigEntry, table: MigTable, gpu_name: str) -> tuple[list[Target], str]:
    """The GPU instances (with compute instances) an entry asks for, or the reason it cannot be had.

    Compute instances of one GPU-instance profile share GPU instances, the fewest that hold them (as
    mig-parted's apply reuses a GPU instance while the next compute instance fits in it); a plain
    ``3g.40gb`` is a GPU instance with one compute instance spanning it."""
    sizes: dict[str, list[int]] = {}
    for name, count in entry.wanted.items():
        cp = table.compute_profile(name)
        if cp is None:
            if table.profile(gpu_instance_name(name)) is None:
                return [], f"{gpu_name} has no MIG profile {name!r}"
            return [], f"{gpu_name}: {table.unknown_reason(name)}"
        sizes.setdefault(cp.gi.name, []).extend([cp.slices] * count)
    targets: list[Target] = []
    for gi_name, wanted in sizes.items():
        gi = table.profile(gi_name)
        assert gi is not None
        packed = pack_compute(gi.compute_slices, wanted)
        assert packed is not None  # every size was checked above
        targets.extend(Target(gi, layout) for layout in packed)
    targets.sort(key=lambda t: (-t.gi.slices, -t.gi.compute_slices, t.gi.name, [(-a, b) for a, b in t.compute]))
    return targets, ""


def plan_node(config: MigConfig, states: Sequence[GpuMigLayout], *, mode_only: bool = False) -> NodePlan:
    plans = []
    unmatched = []
    for state in states:
        entries = config.entries_for(state.gpu)
        if not entries:
            unmatched.append(state.index)
            continue
        plans.append(_plan_entries(state, entries, config.mode_conflict(state.gpu), mode_only=mode_only))
    return NodePlan(config.name, tuple(plans), tuple(unmatched))


def _plan_entries(state: GpuMigLayout, entries: Sequence[MigEntry], conflict: str, *, mode_only: bool) -> GpuPlan:
    """Every entry matching a GPU, applied in order as mig-parted does: each must be possible (the first that is
    not is the GPU's error), they must agree on the MIG mode, and the GPU goes straight to the last one's
    layout (the layouts before it would only be created to be destroyed)."""
    if conflict:
        return GpuPlan(state.index, entries[-1], error=conflict)
    for earlier in entries[:-1]:
        tried = plan_gpu(state, earlier, mode_only=mode_only)
        if tried.error:
            return tried
    return plan_gpu(state, entries[-1], mode_only=mode_only)


def plan_gpu(state: GpuMigLayout, entry: MigEntry, *, mode_only: bool = False) -> GpuPlan:
    """The steps that take one GPU to ``entry``'s layout with the least disruption."""
    gpu = state.gpu
    if not gpu.mig_capable and entry.matches_all_devices:
        return GpuPlan(gpu.index, entry)  # `devices: all` leaves a GPU without MIG alone, as mig-parted does
    if entry.mig_enabled and not gpu.mig_capable:
        return GpuPlan(gpu.index, entry, error=f"{gpu.name} is not MIG-capable")
    if not entry.mig_enabled:
        if not gpu.mig_capable:
            return GpuPlan(gpu.index, entry)
        return _plan_disable(state, entry)
    table = gpu.table
    targets, problem = targets_for(entry, table, gpu.name)
    if problem:
        return GpuPlan(gpu.index, entry, error=problem)
    wanted = [t.gi for t in targets]
    if search_placement(wanted, memory_slices=table.memory_slices, compute_slices=table.compute_slices) is None:
        reason = misfit_reason(wanted, memory_slices=table.memory_slices, compute_slices=table.compute_slices)
        asked = ", ".join(f"{n}x{name}" for name, n in entry.wanted.items())
        needs = "" if all(t.full for t in targets) else f" (the compute instances need {describe(wanted)})"
        what = describe(wanted) if not needs else asked
        return GpuPlan(gpu.index, entry, error=f"{what} does not fit on a {gpu.name}{needs}: {reason}")

    steps: list[MigStep] = []
    if not state.mig_enabled:
        # Enabling needs a reset, which drops every instance: place everything from scratch.
        steps.extend(_mode_steps(state, True))
        if not mode_only:
            steps.extend(_creates(gpu.index, targets, table))
        return GpuPlan(gpu.index, entry, tuple(steps))
    if not state.mig_pending:
        steps.append(_set_mode(gpu.index, True, reset_needed=False))
    if mode_only:
        return GpuPlan(gpu.index, entry, tuple(steps), kept=state.instances)

    kept, placed = _keep_most(state.instances, targets, table)
    kept_ids = {i.gpu_instance_id for i in kept}
    for inst in state.instances:
        if inst.gpu_instance_id not in kept_ids:
            steps.append(
                MigStep(
                    Action.DESTROY,
                    gpu.index,
                    f"GPU {gpu.index}: destroy {inst.label()}",
                    profile=inst.profile,
                    start=inst.start,
                    gpu_instance_id=inst.gpu_instance_id,
                    uuid=inst.uuid,
                )
            )
    steps.extend(_create_steps(gpu.index, placed))
    return GpuPlan(gpu.index, entry, tuple(steps), kept=kept, rebuild=bool(state.instances) and not kept)


def _plan_disable(state: GpuMigLayout, entry: MigEntry) -> GpuPlan:
    if not state.mig_enabled and not state.mig_pending:
        return GpuPlan(state.index, entry)
    steps = [
        MigStep(
            Action.DESTROY,
            state.index,
            f"GPU {state.index}: destroy {inst.label()}",
            profile=inst.profile,
            start=inst.start,
            gpu_instance_id=inst.gpu_instance_id,
            uuid=inst.uuid,
        )
        for inst in state.instances
    ]
    steps.extend(_mode_steps(state, False))
    return GpuPlan(state.index, entry, tuple(steps))


def _mode_steps(state: GpuMigLayout, enabled: bool) -> list[MigStep]:
    steps = []
    reset = state.mig_enabled != enabled
    if state.mig_pending != enabled:
        steps.append(_set_mode(state.index, enabled, reset_needed=reset))
    if reset:
        steps.append(
            MigStep(
                Action.RESET,
                state.index,
                f"GPU {state.index}: reset so MIG mode {'enabled' if enabled else 'disabled'} takes effect",
            )
        )
    return steps


def _set_mode(index: int, enabled: bool, *, reset_needed: bool) -> MigStep:
    word = "enable" if enabled else "disable"
    then = " (pending until reset)" if reset_needed else ""
    return MigStep(Action.SET_MODE, index, f"GPU {index}: {word} MIG mode{then}", enabled=enabled)


def _creates(index: int, targets: Sequence[Target], table: MigTable) -> list[MigStep]:
    wanted = [t.gi for t in targets]
    starts = search_placement(wanted, memory_slices=table.memory_slices, compute_slices=table.compute_slices)
    assert starts is not None  # the caller checked that it fits
    return _create_steps(index, list(zip(targets, starts, strict=True)))


def _create_steps(index: int, placed: Sequence[tuple[Target, int]]) -> list[MigStep]:
    ordered = sorted(placed, key=lambda ts: (ts[1], ts[0].gi.name))
    steps = []
    for t, s in ordered:
        p = t.gi
        what = "with its compute instance" if t.full else f"with compute instances {_compute_text(t.compute)}"
        steps.append(
            MigStep(
                Action.CREATE,
                index,
                f"GPU {index}: create {p.name} at {s}:{p.slices} {what}",
                profile=p.name,
                start=s,
                compute=() if t.full else t.compute,
            )
        )
    return steps


def _keep_most(
    current: Sequence[Instance], targets: Sequence[Target], table: MigTable
) -> tuple[tuple[Instance, ...], list[tuple[Target, int]]]:
    """The largest set of current GPU instances that can stay, and placements for the rest of ``targets``.

    A GPU instance can stay when the target has one of its profile with the same compute instances at the
    same places (at most as many as it wants); subsets are tried from the largest down, in a fixed order,
    the first whose remainder can be placed wins. The empty set always works because the caller checked
    that the target fits an empty GPU."""
    want_counts: dict[tuple[str, tuple[ComputePlacement, ...]], int] = {}
    for t in targets:
        want_counts[t.key] = want_counts.get(t.key, 0) + 1

    def key(inst: Instance) -> tuple[str, tuple[ComputePlacement, ...]]:
        return inst.profile, inst.layout(table)

    usable = [i for i in current if key(i) in want_counts and table.profile(i.profile) is not None]
    kw = {"memory_slices": table.memory_slices, "compute_slices": table.compute_slices}
    for size in range(len(usable), -1, -1):
        for subset in itertools.combinations(usable, size):
            counts: dict[tuple[str, tuple[ComputePlacement, ...]], int] = {}
            for inst in subset:
                counts[key(inst)] = counts.get(key(inst), 0) + 1
            if any(n > want_counts[k] for k, n in counts.items()):
                continue
            fixed = [(_profile(table, i.profile), i.start) for i in subset]
            rest = list(targets)
            for inst in subset:
                rest.remove(next(t for t in rest if t.key == key(inst)))
            starts = search_placement([t.gi for t in rest], fixed, **kw)
            if starts is not None:
                return tuple(subset), list(zip(rest, starts, strict=True))
    raise AssertionError("the target fits an empty GPU, so keeping nothing must work")


def _profile(table: MigTable, name: str) -> MigProfile:
    p = table.profile(name)
    assert p is not None
    return p


# --------------------------------------------------------------------------------------------- assertion


def applied(config: MigConfig, states: Sequence[GpuMigLayout], *, mode_only: bool = False) -> tuple[bool, list[str]]:
    """Whether the config is in place on every GPU (as ``nvidia-mig-parted assert``), and what differs."""
    differences = []
    for state in states:
        entry = config.entry_for(state.gpu)
        if entry is None:
            differences.append(f"GPU {state.index}: no entry of config {config.name!r} matches it")
            continue
        conflict = config.mode_conflict(state.gpu)
        if conflict:
            differences.append(conflict)
            continue
        if not state.gpu.mig_capable and entry.matches_all_devices:
            continue  # skipped by `devices: all`, as mig-parted's assert skips it
        if not entry.mig_enabled:
            if state.gpu.mig_capable and state.mig_enabled:
                differences.append(f"GPU {state.index}: MIG is enabled; the config wants it disabled")
            continue
        if not state.mig_enabled:
            differences.append(f"GPU {state.index}: MIG is disabled; the config wants it enabled")
            continue
        if mode_only:
            continue
        have, want = state.counts(), _canonical_counts(entry.wanted)
        if have != want:
            differences.append(f"GPU {state.index}: has {_counts_text(have)}; the config wants {_counts_text(want)}")
    return not differences, differences


def _canonical_counts(wanted: Mapping[str, int]) -> dict[str, int]:
    """``7c.7g.40gb`` and ``7g.40gb`` are one profile (go-nvlib's canonical name)."""
    out: dict[str, int] = {}
    for name, n in wanted.items():
        c = canonical_name(name)
        out[c] = out.get(c, 0) + n
    return out


def _counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n}x{p}" for p, n in sorted(counts.items())) or "no instances"
