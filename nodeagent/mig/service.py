"""One MIG apply, shared by ``nodeagent mig apply`` and the ``mig`` subsystem: plan, check holders, execute.

A target that does not fit (or asks for what a GPU lacks) is a ConfigError naming the file, the config and
the entry, raised before anything is touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from nodeagent.backends.gpu.protocols import MigControl
from nodeagent.backends.hostfs import Root
from nodeagent.errors import ConfigError, HostPathError
from nodeagent.mig.config import MigConfig
from nodeagent.mig.executor import NVIDIA_DRM_HINT, ApplyReport, Outcome, execute, nvidia_drm_loaded
from nodeagent.mig.holders import find_holders
from nodeagent.mig.observe import mig_layouts
from nodeagent.mig.options import ApplyOptions
from nodeagent.mig.planner import Action, GpuMigLayout, GpuPlan, NodePlan, plan_node
from nodeagent.model.gpu import Inventory


@dataclass
class ApplyOutcome:
    plan: NodePlan
    report: ApplyReport
    pending_reset: tuple[int, ...] = ()
    """GPUs left with a pending mode (--skip-reset)."""

    @property
    def ok(self) -> bool:
        return self.report.ok

    @property
    def reboot_required(self) -> bool:
        return bool(self.report.reboot_required)

    def reasons(self) -> list[str]:
        return self.report.reasons()

    def lines(self) -> list[str]:
        """What happened, per GPU, for people."""
        out = []
        for gp in self.plan.gpus:
            r = self.report.results[gp.gpu]
            kept = f"; kept {', '.join(i.label() for i in gp.kept)}" if gp.kept and r.done else ""
            if r.outcome == Outcome.UNCHANGED and not gp.steps:
                out.append(f"GPU {gp.gpu}: already as configured")
            elif r.done:
                out.append(f"GPU {gp.gpu}: {len(r.done)} step(s) done{kept}")
                out.extend(f"  {d}" for d in r.done)
            if r.reason:
                out.append(f"GPU {gp.gpu}: {r.outcome}: {r.reason}")
        out.extend(f"GPU {i}: MIG mode change pending until the GPU is reset" for i in self.pending_reset)
        out.extend(f"GPU {i}: no entry matches it; left as it is" for i in self.plan.unmatched)
        return out


NoMatch = Literal["fail", "succeed"]
"""``mig.no_match``: what a config none of whose entries matches any GPU of the node does."""


def plan_or_raise(
    config: MigConfig, inventory: Inventory, *, mode_only: bool = False, no_match: NoMatch = "fail"
) -> NodePlan:
    """The node's plan; ConfigError (file, config, entry) when a GPU cannot take its entry, or when no entry
    matches any GPU and ``no_match`` is ``fail`` (with ``succeed``, as mig-parted, the plan is empty)."""
    states = mig_layouts(inventory)
    config.validate([s.gpu for s in states])
    plan = plan_node(config, states, mode_only=mode_only)
    if states and not plan.gpus and no_match == "fail":
        raise ConfigError(
            f"{no_match_reason(config, states)}; mig-parted would leave the GPUs as they are and succeed: "
            'set mig.no_match = "succeed" for that',
            source=config.source,
            key=f"mig-configs.{config.name}",
        )
    labels = {s.index: s.gpu.label for s in states}
    for gp in plan.gpus:
        if gp.error:
            where = gp.entry.where if gp.entry is not None else f"mig-configs.{config.name}"
            raise ConfigError(f"{labels[gp.gpu]}: {gp.error}", source=config.source, key=f"{where}.mig-devices")
    return plan


def no_match_reason(config: MigConfig, states: Sequence[GpuMigLayout]) -> str:
    """Why no entry of ``config`` matches any GPU: what the GPUs are, and what each entry asks for."""
    groups: dict[tuple[str, str], list[int]] = {}
    for s in states:
        groups.setdefault((s.gpu.name, str(s.gpu.device_id)), []).append(s.index)
    gpus = "; ".join(f"GPU {_indexes(ix)}: {name} ({pci})" for (name, pci), ix in groups.items())
    wants = []
    for e in config.entries:
        filters = [str(d) for d in e.device_filter] + [repr(n) for n in e.filter_names]
        devices = "all" if e.devices is None else f"[{', '.join(str(d) for d in e.devices)}]"
        wants.append(f"{e.where} devices {devices}" + (f", device-filter {', '.join(filters)}" if filters else ""))
    return f"no entry of config {config.name!r} matches any GPU of this node ({gpus}; entries: {'; '.join(wants)})"


def _indexes(ix: Sequence[int]) -> str:
    ix = sorted(ix)
    if len(ix) > 2 and ix == list(range(ix[0], ix[-1] + 1)):
        return f"{ix[0]}-{ix[-1]}"
    return ", ".join(str(i) for i in ix)


def without_reset(plan: NodePlan) -> tuple[NodePlan, tuple[int, ...]]:
    """--skip-reset: each GPU stops before its reset (its mode stays pending, nothing is created on it)."""
    gpus: list[GpuPlan] = []
    pending = []
    for gp in plan.gpus:
        cut = next((i for i, s in enumerate(gp.steps) if s.action == Action.RESET), None)
        if cut is None:
            gpus.append(gp)
            continue
        pending.append(gp.gpu)
        gpus.append(replace(gp, steps=gp.steps[:cut]))
    return replace(plan, gpus=tuple(gpus)), tuple(pending)


async def apply_config(
    config: MigConfig,
    control: MigControl,
    *,
    root: Root,
    inventory: Inventory,
    options: ApplyOptions | None = None,
    no_match: NoMatch = "fail",
) -> ApplyOutcome:
    """Plan (ConfigError before anything is touched) and carry the plan out."""
    options = options or ApplyOptions()
    plan = plan_or_raise(config, inventory, mode_only=options.mode_only, no_match=no_match)
    pending: tuple[int, ...] = ()
    if options.skip_reset:
        plan, pending = without_reset(plan)
    outcome = await execute_plan(plan, control, root=root, inventory=inventory, options=options)
    outcome.pending_reset = pending
    return outcome


async def execute_plan(
    plan: NodePlan,
    control: MigControl,
    *,
    root: Root,
    inventory: Inventory,
    options: ApplyOptions | None = None,
) -> ApplyOutcome:
    """Find the holders of the GPUs that change (their processes, and their pods when ``options.pods``), then
    execute."""
    options = options or ApplyOptions()
    changing = [g for g in inventory.gpus if any(gp.gpu == g.index and gp.steps for gp in plan.gpus)]
    holders = {}
    if changing:
        holders = await find_holders(changing, root=root, processes=control, pods=options.pods)

    async def drm_hint() -> str:
        try:
            modules = root.read_text("/proc/modules")
        except HostPathError:
            return ""
        return NVIDIA_DRM_HINT if nvidia_drm_loaded(modules) else ""

    report = await execute(plan, control, options=options, holders=holders, reset_blocked_hint=drm_hint)
    return ApplyOutcome(plan, report)


def changed_gpus(outcome: ApplyOutcome) -> Sequence[int]:
    return [r.gpu for r in outcome.report.results.values() if r.done]
