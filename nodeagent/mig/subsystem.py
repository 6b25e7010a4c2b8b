"""The ``mig`` subsystem: keep the GPUs' MIG layout at ``mig.config`` (from ``mig.config_file``, or the configs
generated from the GPUs' own profiles), with the least disruption.

State, as mig-manager's ``nvidia.com/mig.config.state``: ``pending`` while a change runs, ``success``,
``failed`` (with the reason), ``rebooting`` when a GPU cannot be reset here: the desired config is then kept
in ``<state_dir>/mig-desired.json`` and applied at the next start, where a mode that still did not change is
``failed`` ("did not take effect after rebooting"). The state is in ``status``, in /status and in metrics.
After a change the new inventory is published (``events.MIG_CHANGED``; CDI and metrics follow) and every
reconcile publishes ``events.MIG_READY`` (the validation file ``mig-ready`` follows it). The agent's own
sampling of a changing GPU is paused through the GPU-state owner (``Context.gpu_state``), which is also
asked for the inventory and refreshes it once after a change.

The Node's ``nvidia.com/mig.config`` label drives it as it drives mig-manager: the labels subsystem publishes
the label's value (``events.MIG_CONFIG_REQUESTED``) and this subsystem applies that config (it wins over
``mig.config``; an empty label leaves the layouts as they are). With ``mig.pause_operands`` the GPU
Operator's operands are paused around a change through the Node gateway (``Context.node``, see
``mig.operands``) and restored whatever the outcome; the labels subsystem writes the state label, the
``NvidiaMigConfigured`` condition and the Event from ``MIG_READY``.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from nodeagent import events
from nodeagent.aio import run_blocking, until_stopped
from nodeagent.errors import ConfigError, HostPathError, NodeAgentError
from nodeagent.gpustate import GpuState
from nodeagent.kube.client import KubeError
from nodeagent.mig import config as cfg
from nodeagent.mig.declaration import DECLARATION
from nodeagent.mig.generate import generate, to_text
from nodeagent.mig.observe import mig_layouts
from nodeagent.mig.operands import Operands, restore_patch
from nodeagent.mig.options import ApplyOptions, SamplingPause
from nodeagent.mig.planner import Action, NodePlan, applied
from nodeagent.mig.service import execute_plan, no_match_reason, plan_or_raise
from nodeagent.model.gpu import Inventory
from nodeagent.model.mig import MigConfigRequest, MigReadiness
from nodeagent.plan import Disruption, Plan, Step
from nodeagent.subsystem import ApplyResult, BaseSubsystem, Context, Phase

STATES = ("pending", "rebooting", "success", "failed")
DESIRED_FILE = "mig-desired.json"
GENERATED = "<generated from the GPUs' profiles>"


@dataclass
class MigObservation:
    inventory: Inventory | None
    config: cfg.MigConfig | None
    source: str = ""
    """Where the desired config came from: settings, or the file persisted before a reboot."""
    error: str = ""
    after_reboot: bool = False


_DISRUPTION = {
    Action.SET_MODE: Disruption.GPU_RESET,
    Action.RESET: Disruption.GPU_RESET,
    Action.DESTROY: Disruption.RESTART,
    Action.CREATE: Disruption.NONE,
}


class OwnerPause:
    """``SamplingPause`` over the GPU-state owner: the agent's own NVML use of a GPU stops during its change."""

    def __init__(self, state: GpuState) -> None:
        self.state = state

    async def pause(self, indexes: Sequence[int]) -> None:
        self.state.pause(indexes)

    async def resume(self, indexes: Sequence[int]) -> None:
        self.state.resume(indexes)


_GAUGES: weakref.WeakKeyDictionary[CollectorRegistry, Gauge] = weakref.WeakKeyDictionary()


def _state_gauge(registry: CollectorRegistry) -> Gauge:
    # A subsystem restarted by a settings reload gets a new instance but the same registry.
    if registry not in _GAUGES:
        _GAUGES[registry] = Gauge(
            "nodeagent_mig_config_state",
            "MIG config state (1 for the current one): pending, rebooting, success, failed.",
            ["config", "state"],
            registry=registry,
        )
    return _GAUGES[registry]


def _dynamic_mig_refusal(name: str, source: str) -> str:
    return (
        f"MIG config {name!r} ({source}) refused: dynamic MIG (dra.dynamic_mig) creates and destroys this node's "
        "MIG instances per ResourceClaim, so the layouts are left as they are"
    )


class MigSubsystem(BaseSubsystem):
    declaration = DECLARATION

    def __init__(self, ctx: Context, sampling: SamplingPause | None = None) -> None:
        super().__init__(ctx)
        self.sampling = sampling or OwnerPause(ctx.gpu_state)
        self.state = ""
        self.reason = ""
        self.config_name = ""
        self.requested = ""
        """The config the Node's ``nvidia.com/mig.config`` label names ('' when absent or not watched)."""
        self._state_gauge = _state_gauge(ctx.registry)
        self.operands = Operands(ctx.node, self.log)
        self._daemon = False
        """Operands are paused only by the running agent (a one-shot apply leaves the Node alone)."""

    # ------------------------------------------------------------------------------ desired config

    @property
    def _desired_path(self) -> str:
        return self.ctx.settings.agent.state_dir.rstrip("/") + "/" + DESIRED_FILE

    def _persisted(self) -> dict[str, Any] | None:
        try:
            text = self.ctx.root.read_text(self._desired_path)
            doc = json.loads(text) if text else None
        except (HostPathError, ValueError):
            return None
        return doc if isinstance(doc, dict) and isinstance(doc.get("config"), str) else None

    def _load_config(self, name: str, path: str, gpus: list[cfg.GpuIdentity]) -> cfg.MigConfig:
        if path:
            return cfg.load_file(path).select(name)
        return cfg.parse_text(to_text(generate(gpus)), source=GENERATED).select(name)

    async def observe(self) -> MigObservation:
        settings = self.ctx.settings.mig
        try:
            inventory = await self.ctx.gpu_state.refresh(raise_errors=True)
        except NodeAgentError as err:
            return MigObservation(None, None, error=f"no GPU inventory: {err}")
        assert inventory is not None
        gpus = [s.gpu for s in mig_layouts(inventory)]
        persisted = await run_blocking(self._persisted)
        name, path, source = settings.config, settings.config_file, "settings"
        if self.requested:
            name, source = self.requested, "the Node label nvidia.com/mig.config"
        if not name and persisted is not None:
            name, path, source = persisted["config"], str(persisted.get("file", "")), "persisted before a reboot"
        if not name:
            return MigObservation(inventory, None)
        if self.ctx.settings.dra.enabled and self.ctx.settings.dra.dynamic_mig:
            return MigObservation(inventory, None, source, error=_dynamic_mig_refusal(name, source))
        after_reboot = persisted is not None and persisted.get("config") == name and bool(persisted.get("rebooting"))
        try:
            config = await run_blocking(self._load_config, name, path, gpus)
        except ConfigError as err:
            return MigObservation(inventory, None, source, error=str(err), after_reboot=after_reboot)
        for warning in config.warnings:
            self.log.warning("mig_config_warning", warning=warning)
        return MigObservation(inventory, config, source, after_reboot=after_reboot)

    def plan(self, observed: MigObservation) -> Plan:
        if observed.error:
            return Plan(self.name, error=observed.error)
        if observed.config is None or observed.inventory is None:
            return Plan(self.name, evidence=("mig.config is not set: MIG layouts are left as they are",))
        config = observed.config
        try:
            node_plan = plan_or_raise(config, observed.inventory, no_match=self.ctx.settings.mig.no_match)
        except ConfigError as err:
            return Plan(self.name, error=str(err))
        evidence = [f"config {config.name!r} from {config.source} ({observed.source})"]
        for gp in node_plan.gpus:
            if not gp.steps:
                evidence.append(f"GPU {gp.gpu}: as configured")
            elif gp.kept:
                evidence.append(f"GPU {gp.gpu}: keeps {', '.join(i.label() for i in gp.kept)}")
            elif gp.rebuild:
                evidence.append(f"GPU {gp.gpu}: no instance can stay; rebuilt")
        evidence.extend(f"GPU {i}: no entry matches it; left as it is" for i in node_plan.unmatched)
        steps = tuple(
            Step(
                f"mig-{s.action}",
                f"GPU {s.gpu}",
                s.summary,
                disruption=_DISRUPTION[s.action],
                disrupts=s.uuid or (f"GPU {s.gpu}" if _DISRUPTION[s.action] == Disruption.GPU_RESET else ""),
                payload=node_plan,
            )
            for s in node_plan.steps
        )
        return Plan(self.name, steps=steps, evidence=tuple(evidence), warnings=config.warnings)

    async def apply(self, plan: Plan) -> ApplyResult:
        node_plan = plan.steps[0].payload if plan.steps else None
        if not isinstance(node_plan, NodePlan):
            return ApplyResult()
        control = self.ctx.backends.mig_control
        if control is None:
            raise NodeAgentError(f"the {self.ctx.gpus.kind} GPU backend cannot change MIG layouts")
        changing = [gp.gpu for gp in node_plan.gpus if gp.steps]
        self._set_state(node_plan.config, "pending", f"applying to {self._named(changing)}")
        pause = self.ctx.settings.mig.pause_operands and self._daemon
        if pause:
            answer = await self.operands.pause(self.ctx.settings.mig.operand_wait_s)
            if answer.problem:
                await self._restore_operands()
                self._set_state(node_plan.config, "failed", answer.problem)
                return ApplyResult(messages=(answer.problem,))
        final: tuple[str, str] = ("failed", "interrupted")
        try:
            final, result = await self._execute(node_plan)
            return result
        finally:
            if pause:  # as mig-manager: the operands come back before the final state is reported
                await self._restore_operands()
            self._set_state(node_plan.config, *final)

    async def _restore_operands(self) -> None:
        restored = await self.operands.restore()
        if restored.problem:
            self.log.warning("operands_not_restored", problem=restored.problem)

    async def _execute(self, node_plan: NodePlan) -> tuple[tuple[str, str], ApplyResult]:
        """Carry the plan out; the final (state, reason) is reported by the caller."""
        control = self.ctx.backends.mig_control
        assert control is not None
        inventory = await self.ctx.gpu_state.current()
        socket = self.ctx.settings.kubelet.pod_resources_socket
        pods = self.ctx.backends.pod_resources(socket) if socket else None
        try:
            options = ApplyOptions(sampling=self.sampling, pods=pods)
            outcome = await execute_plan(node_plan, control, root=self.ctx.root, inventory=inventory, options=options)
        finally:
            if pods is not None:
                await pods.close()
        if outcome.report.changed:
            new = await self.ctx.gpu_state.refresh()  # publishes INVENTORY_CHANGED: CDI, metrics, driver follow
            self.ctx.bus.publish(events.MIG_CHANGED, new)
        report = outcome.report
        reasons = [
            f"{self._named([r.gpu])}: {r.reason.removeprefix(f'GPU {r.gpu}: ')}"
            for r in report.results.values()
            if r.reason
        ]
        reasons += [report.hook_error] if report.hook_error else []
        if outcome.reboot_required:
            await self._persist(node_plan.config, rebooting=True)
            final = ("rebooting", "; ".join(reasons))
        elif not outcome.ok:
            final = ("failed", "; ".join(reasons))
        else:
            await self._forget()
            final = ("success", f"{self._named([gp.gpu for gp in node_plan.gpus])} as configured")
        changed = tuple(f"GPU {r.gpu}" for r in outcome.report.results.values() if r.done)
        return final, ApplyResult(changed=changed, messages=tuple(outcome.lines()))

    async def _persist(self, name: str, *, rebooting: bool) -> None:
        doc = {"config": name, "file": self.ctx.settings.mig.config_file, "rebooting": rebooting}
        data = (json.dumps(doc) + "\n").encode()
        await run_blocking(self.ctx.root.write_atomic, self._desired_path, data, mode=0o644)

    async def _forget(self) -> None:
        if await run_blocking(self.ctx.root.exists, self._desired_path):
            await run_blocking(self.ctx.root.remove, self._desired_path)

    # ------------------------------------------------------------------------------------ status

    def _set_state(self, config: str, state: str, reason: str = "") -> None:
        self.config_name, self.state, self.reason = config, state, reason
        for s in STATES:
            self._state_gauge.labels(config=config, state=s).set(1 if s == state else 0)
        phase = {"failed": Phase.FAILED, "rebooting": Phase.DEGRADED}.get(state, Phase.RUNNING)
        self.set_status(phase, reason if state != "success" else "", config=config, state=state)
        self.ctx.bus.publish(events.MIG_READY, MigReadiness(config, state, reason))

    async def reconcile(self) -> None:
        """observe → plan → apply once; every outcome ends in a state, never in a traceback."""
        try:
            observed = await self.observe()
            plan = self.plan(observed)
            if plan.error:
                self._set_state(self._wanted_name(), "failed", plan.error)
                return
            if observed.config is None:
                self.set_status(Phase.RUNNING, "mig.config is not set", state="")
                return
            name = observed.config.name
            if plan.empty:
                await self._forget()
                self._set_state(name, "success", self._unchanged_reason(observed))
                return
            if observed.after_reboot and observed.inventory is not None:
                states = mig_layouts(observed.inventory)
                mode_ok, _ = applied(observed.config, states, mode_only=True)
                if not mode_ok:
                    await self._forget()
                    stuck = [
                        st.index
                        for st in states
                        if (e := observed.config.entry_for(st.gpu)) is not None
                        and st.gpu.mig_capable
                        and e.mig_enabled != st.mig_enabled
                    ]
                    why = "the MIG mode change did not take effect after rebooting"
                    self._set_state(name, "failed", f"{self._named(stuck)}: {why}" if stuck else why)
                    return
            await self.apply(plan)
        except NodeAgentError as err:
            self._set_state(self._wanted_name(), "failed", str(err))

    async def revert(self) -> ApplyResult:
        """Operand labels a MIG change left paused (an agent killed mid-change) go back to ``true``; the MIG
        layouts stay as they are."""
        if self.ctx.node.client() is None:
            return ApplyResult()
        node = self.ctx.node
        try:
            _, wrote = await node.patch(restore_patch)
        except KubeError as err:
            return ApplyResult(messages=(f"operand labels: {err}",))
        return ApplyResult(changed=(f"Node/{node.node_name} operand labels",) if wrote else ())

    def _unchanged_reason(self, observed: MigObservation) -> str:
        """Why nothing had to change: the GPUs the config matched are as configured (named), or no entry
        matches any GPU and ``mig.no_match`` lets that succeed."""
        assert observed.config is not None and observed.inventory is not None
        states = mig_layouts(observed.inventory)
        matched = [s.index for s in states if observed.config.entries_for(s.gpu)]
        if matched or not states:
            return f"{self._named(matched)} as configured" if matched else ""
        return f'{no_match_reason(observed.config, states)}: left as they are (mig.no_match = "succeed")'

    def _named(self, indexes: Sequence[int]) -> str:
        """``GPU 0 (GPU-…), GPU 1 (GPU-…)``: the GPUs a state's reason is about, by index and UUID, so the
        condition's message and its Event say which GPU."""
        inventory = self.ctx.gpu_state.inventory
        uuids = {g.index: g.uuid for g in inventory.gpus} if inventory is not None else {}
        return ", ".join(f"GPU {i} ({uuids[i]})" if uuids.get(i) else f"GPU {i}" for i in indexes) or "no GPU"

    def _wanted_name(self) -> str:
        return self.requested or self.ctx.settings.mig.config or self.config_name

    async def start(self) -> None:
        self._daemon = True
        self.set_status(Phase.STARTING)
        await self.reconcile()

    async def run(self, stop: asyncio.Event) -> None:
        """Apply the config the Node's label asks for, each time it changes. (A settings reload that changes
        ``mig`` restarts this subsystem, which reconciles at start.)"""
        async with self.ctx.bus.subscribe(events.MIG_CONFIG_REQUESTED) as sub:
            retained = self.ctx.bus.last(events.MIG_CONFIG_REQUESTED)
            if isinstance(retained, MigConfigRequest):
                await self.on_request(retained)
            while not stop.is_set():
                event = await until_stopped(stop, sub.get())
                if event is not None and isinstance(event.payload, MigConfigRequest):
                    await self.on_request(event.payload)

    async def on_request(self, request: MigConfigRequest) -> None:
        """mig-manager acts on a change of the label: the same config that already succeeded (or already
        failed after a reboot) is not applied again; an empty label leaves the layouts as they are."""
        if request.config == self.requested:
            return
        self.requested = request.config
        if not request.config:
            self.log.info("mig_config_label_removed", keeps=self.config_name)
            return
        if request.config == self.config_name and self.state in ("success", "failed", "pending"):
            self._set_state(self.config_name, self.state, self.reason)  # republish: the label gets its state
            return
        self.log.info("mig_config_requested", config=request.config, source=request.source)
        await self.reconcile()
