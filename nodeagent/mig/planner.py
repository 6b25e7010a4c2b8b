"""The MIG planner: from each GPU's current layout and its desired entry to the exact steps. Pure; no I/O.

Per GPU, in this order of preference:

1. the layout already matches (mode and instance counts): no step at all, every instance stays;
2. the target can be reached while keeping existing instances where they are: the largest such set of
   instances stays, only the difference is destroyed and created (each creation at an explicit start);
3. otherwise that GPU (only that GPU) is rebuilt: every instance destroyed, the target placed from scratch.

Placements are searched exactly (``model.mig.search_placement``), so ``3g.40gb + 2x2g.20gb`` is placed with
the 3g at slice 4, and a target that fits no placement is refused with a reason naming the conflict. Equal
inputs give equal plans.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from nodeagent.mig.config import GpuIdentity, MigConfig, MigEntry
from nodeagent.model.gpu import MigDevice, MigProfile
from nodeagent.model.mig import MigTable, describe, misfit_reason, search_placement


class Action(StrEnum):
    DESTROY = "destroy"
    SET_MODE = "set-mode"
    RESET = "reset"
    CREATE = "create"


@dataclass(frozen=True)
class Instance:
    """An existing GPU instance (with its compute instance) as the planner sees it."""

    gpu_instance_id: int
    profile: str
    start: int
    uuid: str = ""

    def label(self) -> str:
        uuid = f" {self.uuid}" if self.uuid else ""
        return f"{self.profile} at {self.start} (GI {self.gpu_instance_id}{uuid})"


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
        out: dict[str, int] = {}
        for inst in self.instances:
            out[inst.profile] = out.get(inst.profile, 0) + 1
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
    """GPU instances from an inventory's MIG devices (one per GPU instance, whatever its compute instances)."""
    seen: dict[int, Instance] = {}
    for d in devices:
        seen.setdefault(d.gpu_instance_id, Instance(d.gpu_instance_id, d.profile, d.placement_start, d.uuid))
    return tuple(sorted(seen.values(), key=lambda i: (i.start, i.gpu_instance_id)))


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
    if entry.mig_enabled and not gpu.mig_capable:
        return GpuPlan(gpu.index, entry, error=f"{gpu.name} is not MIG-capable")
    if not entry.mig_enabled:
        if not gpu.mig_capable:
            return GpuPlan(gpu.index, entry)
        return _plan_disable(state, entry)
    table = gpu.table
    wanted: list[MigProfile] = []
    for name, count in entry.wanted.items():
        profile = table.profile(name)
        if profile is None:
            return GpuPlan(gpu.index, entry, error=f"{gpu.name} has no MIG profile {name!r}")
        wanted.extend([profile] * count)
    wanted.sort(key=lambda p: (-p.slices, -p.compute_slices, p.name))
    if search_placement(wanted, memory_slices=table.memory_slices, compute_slices=table.compute_slices) is None:
        reason = misfit_reason(wanted, memory_slices=table.memory_slices, compute_slices=table.compute_slices)
        return GpuPlan(gpu.index, entry, error=f"{describe(wanted)} does not fit on a {gpu.name}: {reason}")

    steps: list[MigStep] = []
    if not state.mig_enabled:
        # Enabling needs a reset, which drops every instance: place everything from scratch.
        steps.extend(_mode_steps(state, True))
        if not mode_only:
            steps.extend(_creates(gpu.index, wanted, (), table))
        return GpuPlan(gpu.index, entry, tuple(steps))
    if not state.mig_pending:
        steps.append(_set_mode(gpu.index, True, reset_needed=False))
    if mode_only:
        return GpuPlan(gpu.index, entry, tuple(steps), kept=state.instances)

    kept, placed = _keep_most(state.instances, wanted, table)
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


def _creates(
    index: int, wanted: Sequence[MigProfile], fixed: Sequence[tuple[MigProfile, int]], table: MigTable
) -> list[MigStep]:
    starts = search_placement(wanted, fixed, memory_slices=table.memory_slices, compute_slices=table.compute_slices)
    assert starts is not None  # the caller checked that it fits
    return _create_steps(index, list(zip(wanted, starts, strict=True)))


def _create_steps(index: int, placed: Sequence[tuple[MigProfile, int]]) -> list[MigStep]:
    ordered = sorted(placed, key=lambda ps: (ps[1], ps[0].name))
    return [
        MigStep(
            Action.CREATE,
            index,
            f"GPU {index}: create {p.name} at {s}:{p.slices} with its compute instance",
            profile=p.name,
            start=s,
        )
        for p, s in ordered
    ]


def _keep_most(
    current: Sequence[Instance], wanted: Sequence[MigProfile], table: MigTable
) -> tuple[tuple[Instance, ...], list[tuple[MigProfile, int]]]:
    """The largest set of current instances that can stay, and placements for the rest of ``wanted``.

    Candidates are the instances whose profile the target has (at most as many as it wants); subsets are
    tried from the largest down, in a fixed order, the first whose remainder can be placed wins. The empty
    set always works because the caller checked that the target fits an empty GPU."""
    want_counts: dict[str, int] = {}
    for p in wanted:
        want_counts[p.name] = want_counts.get(p.name, 0) + 1
    usable = [i for i in current if i.profile in want_counts and table.profile(i.profile) is not None]
    kw = {"memory_slices": table.memory_slices, "compute_slices": table.compute_slices}
    for size in range(len(usable), -1, -1):
        for subset in itertools.combinations(usable, size):
            counts: dict[str, int] = {}
            for inst in subset:
                counts[inst.profile] = counts.get(inst.profile, 0) + 1
            if any(n > want_counts[name] for name, n in counts.items()):
                continue
            fixed = [(_profile(table, i.profile), i.start) for i in subset]
            rest = list(wanted)
            for inst in subset:
                rest.remove(_profile(table, inst.profile))
            starts = search_placement(rest, fixed, **kw)
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
        if not entry.mig_enabled:
            if state.gpu.mig_capable and state.mig_enabled:
                differences.append(f"GPU {state.index}: MIG is enabled; the config wants it disabled")
            continue
        if not state.mig_enabled:
            differences.append(f"GPU {state.index}: MIG is disabled; the config wants it enabled")
            continue
        if mode_only:
            continue
        have, want = state.counts(), entry.wanted
        if have != want:
            differences.append(f"GPU {state.index}: has {_counts_text(have)}; the config wants {_counts_text(want)}")
    return not differences, differences


def _counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n}x{p}" for p, n in sorted(counts.items())) or "no instances"
