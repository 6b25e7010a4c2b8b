"""Carrying out a MIG plan through the GPU backend's MigControl, one GPU's failure never touching another.

Order (as mig-parted, with its hooks): ``apply-start``; GPUs whose holders would be hurt are refused unless
forced; the agent's own sampling of the changed GPUs is paused; ``pre-apply-mode`` then every mode change
(and the reset that makes it current); ``pre-apply-config`` then every destroy and create; sampling resumed;
``apply-exit`` always. A reset the driver cannot do here (``MigResetUnavailable``) leaves that GPU
"reboot required"; a reset refused because the GPU is in use names ``nvidia_drm`` when it is loaded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import structlog

from nodeagent.backends.gpu.protocols import MigControl, MigInUse, MigResetUnavailable
from nodeagent.errors import NodeAgentError
from nodeagent.mig.holders import Holder, blocking
from nodeagent.mig.hooks import HookFailed, Hooks
from nodeagent.mig.options import ApplyOptions
from nodeagent.mig.planner import Action, GpuPlan, MigStep, NodePlan
from nodeagent.model.gpu import MigDevice

log = structlog.get_logger("nodeagent.mig")


class Outcome(StrEnum):
    UNCHANGED = "unchanged"
    CHANGED = "changed"
    REFUSED = "refused"
    """Holders would be hurt and --force was not given; nothing was done to this GPU."""
    REBOOT_REQUIRED = "reboot-required"
    FAILED = "failed"


@dataclass
class GpuResult:
    gpu: int
    outcome: Outcome = Outcome.UNCHANGED
    reason: str = ""
    created: list[MigDevice] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    """Summaries of the steps carried out."""


@dataclass
class ApplyReport:
    results: dict[int, GpuResult]
    hook_error: str = ""

    @property
    def failed(self) -> list[GpuResult]:
        return [r for r in self.results.values() if r.outcome in (Outcome.FAILED, Outcome.REFUSED)]

    @property
    def reboot_required(self) -> list[GpuResult]:
        return [r for r in self.results.values() if r.outcome == Outcome.REBOOT_REQUIRED]

    @property
    def changed(self) -> bool:
        return any(r.done for r in self.results.values())

    @property
    def ok(self) -> bool:
        return not self.failed and not self.reboot_required and not self.hook_error

    def reasons(self) -> list[str]:
        out = [f"GPU {r.gpu}: {r.reason}" for r in self.results.values() if r.reason]
        return [*out, self.hook_error] if self.hook_error else out


def _mode_part(plan: GpuPlan) -> tuple[list[MigStep], list[MigStep]]:
    """Steps up to the last mode change or reset, and the rest."""
    last = max((i for i, s in enumerate(plan.steps) if s.action in (Action.SET_MODE, Action.RESET)), default=-1)
    return list(plan.steps[: last + 1]), list(plan.steps[last + 1 :])


async def execute(
    plan: NodePlan,
    control: MigControl,
    *,
    options: ApplyOptions,
    holders: Mapping[int, Sequence[Holder]] | None = None,
    reset_blocked_hint: Callable[[], Awaitable[str]] | None = None,
) -> ApplyReport:
    hooks = options.hooks
    env = dict(options.hook_env)
    sampling = options.sampling
    force = options.force
    results = {g.gpu: GpuResult(g.gpu) for g in plan.gpus}
    report = ApplyReport(results)
    try:
        await hooks.run("apply-start", env)
    except HookFailed as err:
        report.hook_error = str(err)
        await _exit_hook(hooks, env, report)
        return report

    work: list[tuple[GpuPlan, list[MigStep], list[MigStep]]] = []
    for gp in plan.gpus:
        if gp.error:
            results[gp.gpu].outcome, results[gp.gpu].reason = Outcome.FAILED, gp.error
            continue
        if not gp.steps:
            continue
        destroyed = [
            s.gpu_instance_id for s in gp.steps if s.action == Action.DESTROY and s.gpu_instance_id is not None
        ]
        hurt = blocking(holders or {}, gp.gpu, mode_change=gp.mode_change, destroyed=destroyed)
        if hurt and not force:
            results[gp.gpu].outcome = Outcome.REFUSED
            results[gp.gpu].reason = "in use by " + "; ".join(h.describe() for h in hurt) + " (use --force to go on)"
            continue
        mode_steps, config_steps = _mode_part(gp)
        work.append((gp, mode_steps, config_steps))

    indexes = [gp.gpu for gp, _, _ in work]
    if indexes:
        await sampling.pause(indexes)
    try:
        if any(mode for _, mode, _ in work):
            try:
                await hooks.run("pre-apply-mode", env)
            except HookFailed as err:
                report.hook_error = str(err)
                work = []
        for gp, mode_steps, _ in work:
            await _run_steps(control, gp.gpu, mode_steps, results[gp.gpu], reset_blocked_hint)
        live = [(gp, cfg) for gp, _, cfg in work if cfg and results[gp.gpu].outcome == Outcome.UNCHANGED]
        if live:
            try:
                await hooks.run("pre-apply-config", env)
            except HookFailed as err:
                report.hook_error = str(err)
                live = []
        for gp, cfg in live:
            await _run_steps(control, gp.gpu, cfg, results[gp.gpu], reset_blocked_hint)
    finally:
        if indexes:
            await sampling.resume(indexes)
    for gp, _, _ in work:
        r = results[gp.gpu]
        if r.outcome == Outcome.UNCHANGED and r.done:
            r.outcome = Outcome.CHANGED
    await _exit_hook(hooks, env, report)
    return report


async def _exit_hook(hooks: Hooks, env: Mapping[str, str], report: ApplyReport) -> None:
    try:
        await hooks.run("apply-exit", env)
    except HookFailed as err:
        report.hook_error = report.hook_error or str(err)


async def _run_steps(
    control: MigControl,
    gpu: int,
    steps: Sequence[MigStep],
    result: GpuResult,
    reset_blocked_hint: Callable[[], Awaitable[str]] | None,
) -> None:
    """Run one GPU's steps in order; the first failure stops this GPU (only) with a reason."""
    reset_needed = True
    for step in steps:
        if result.outcome != Outcome.UNCHANGED:
            return
        try:
            if step.action == Action.SET_MODE:
                assert step.enabled is not None
                reset_needed = await control.set_mig_mode(gpu, step.enabled)
            elif step.action == Action.RESET:
                if not reset_needed:
                    result.done.append(f"GPU {gpu}: MIG mode took effect without a reset")
                    continue
                await control.reset_gpu(gpu)
            elif step.action == Action.DESTROY:
                assert step.gpu_instance_id is not None
                await control.destroy_gpu_instance(gpu, step.gpu_instance_id)
                result.destroyed.append(step.uuid)
            else:
                made = await control.create_gpu_instance(gpu, step.profile, start=step.start, compute=step.compute)
                result.created.append(made)
        except MigResetUnavailable as err:
            result.outcome = Outcome.REBOOT_REQUIRED
            result.reason = f"{err}; the new MIG mode takes effect after a reboot"
            return
        except MigInUse as err:
            hint = await reset_blocked_hint() if reset_blocked_hint and step.action == Action.RESET else ""
            result.outcome, result.reason = Outcome.FAILED, f"{err}{'; ' + hint if hint else ''}"
            return
        except NodeAgentError as err:
            result.outcome, result.reason = Outcome.FAILED, f"{step.summary} failed: {err}"
            log.error("mig_step_failed", gpu=gpu, step=step.summary, error=str(err))
            return
        result.done.append(step.summary)
        log.info("mig_step_done", gpu=gpu, step=step.summary)


NVIDIA_DRM_HINT = (
    "nvidia_drm is loaded and keeps the GPU open, so it cannot be reset: stop the display manager and unload it "
    "(modprobe -r nvidia_drm), or reboot to apply the MIG mode"
)


def nvidia_drm_loaded(proc_modules: str | None) -> bool:
    """Whether /proc/modules lists nvidia_drm."""
    return any(line.split(" ", 1)[0] == "nvidia_drm" for line in (proc_modules or "").splitlines())
