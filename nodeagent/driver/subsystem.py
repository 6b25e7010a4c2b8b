"""The driver subsystem: find the driver, load its modules, check versions, make device nodes, tell others.

Everything else waits for it through ``events.DRIVER_READY`` (payload: DriverFacts, or None when the
driver stops being ready). The GPU Operator's validation files are kept in step for outside tools.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from nodeagent import events
from nodeagent.aio import run_blocking
from nodeagent.backends import chardevs as nodes_backend
from nodeagent.backends.kmod import Modprobe, ModuleLoader
from nodeagent.driver import planner
from nodeagent.driver.devnodes import DevNode
from nodeagent.driver.facts import DriverFacts
from nodeagent.driver.modules import ModuleLoad
from nodeagent.driver.observe import DriverObservation, gather
from nodeagent.errors import NodeAgentError, PermanentError
from nodeagent.model.gpu import Inventory
from nodeagent.plan import Plan
from nodeagent.subsystem import ApplyResult, BaseSubsystem, Context, Phase

_UNSET: Any = object()


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.info = Gauge(
            "nodeagent_driver_info",
            "NVIDIA driver versions seen by the agent (value 1).",
            ["kernel_module_version", "library_version"],
            registry=registry,
        )
        self.ready = Gauge("nodeagent_driver_ready", "1 when the NVIDIA driver is ready, else 0.", registry=registry)
        self.version_ok = Gauge(
            "nodeagent_driver_version_ok",
            "1 when kernel module and libnvidia-ml versions agree and meet the minimum, else 0.",
            registry=registry,
        )


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()


def _metrics_for(registry: CollectorRegistry) -> _Metrics:
    # A restarted subsystem gets a new instance but the same registry: register the gauges once.
    if registry not in _METRICS:
        _METRICS[registry] = _Metrics(registry)
    return _METRICS[registry]


class DriverSubsystem(BaseSubsystem):
    name = "driver"
    requires = ()

    def __init__(self, ctx: Context, *, loader: ModuleLoader | None = None) -> None:
        super().__init__(ctx)
        self._loader = loader
        self._published: DriverFacts | None = _UNSET
        self._metrics = _metrics_for(ctx.registry)
        self.assessment: planner.Assessment | None = None
        self._planned_health: bool | None = None

    # ------------------------------------------------------------------------------ one-shot contract

    async def observe(self) -> DriverObservation:
        ds = self.ctx.settings.driver
        return await run_blocking(
            gather, self.ctx.root, driver_root=ds.root, dev_root=ds.dev_root, validations_dir=ds.validations_dir
        )

    def plan(self, observed: DriverObservation) -> Plan:
        self.assessment = planner.assess(observed, self.ctx.settings)
        healthy = self.ctx.bus.last(events.RUNTIME_HEALTHY)
        self._planned_health = healthy
        plan = planner.build_plan(self.assessment, observed, self.ctx.settings, runtime_healthy=healthy)
        self.last_plan = plan
        return plan

    async def apply(self, plan: Plan) -> ApplyResult:
        """Run the plan's steps in order; after loading modules, plan and run the follow-up once."""
        changed, messages = await self._execute(plan)
        if any(s.action == "load-module" for s in plan.steps):
            follow = self.plan(await self.observe())
            more, notes = await self._execute(follow, skip_loads=True)
            changed += more
            messages += notes
        return ApplyResult(changed=tuple(changed), messages=tuple(messages))

    async def _execute(self, plan: Plan, *, skip_loads: bool = False) -> tuple[list[str], list[str]]:
        changed: list[str] = []
        messages: list[str] = []
        for step in plan.steps:
            if step.action == "load-module" and not skip_loads:
                load: ModuleLoad = step.payload
                try:
                    await (await self._module_loader()).load(load.module, load.params)
                except NodeAgentError as err:
                    raise PermanentError(f"loading {load.module} failed: {err}") from err
                self.log.info("driver_module_loaded", module=load.module, params=list(load.params))
                changed.append(f"module {load.module}")
            elif step.action == "create-device-node":
                node: DevNode = step.payload
                await run_blocking(
                    nodes_backend.make_node,
                    self.ctx.root,
                    self.ctx.settings.driver.dev_root,
                    node.path,
                    major=node.major,
                    minor=node.minor,
                    mode=node.mode,
                    placeholder=self.ctx.simulate,
                )
                self.log.info("driver_device_node_created", path=step.target, major=node.major, minor=node.minor)
                changed.append(step.target)
            elif step.action == "write-file":
                if await run_blocking(self.ctx.root.write_atomic, step.target, step.payload):
                    changed.append(step.target)
            elif step.action == "remove-file" and await run_blocking(self.ctx.root.remove, step.target):
                changed.append(step.target)
                messages.append(f"removed {step.target}: {step.summary}")
        return changed, messages

    async def _module_loader(self) -> ModuleLoader:
        if self._loader is not None:
            return self._loader
        if self.ctx.simulate:
            from nodeagent.backends.sim.modprobe import SimModprobe

            inventory = await self._sim_inventory()
            version = inventory.driver_version if inventory else self._library_version()
            self._loader = SimModprobe(self.ctx.root, version=version, inventory=inventory)
        else:
            self._loader = Modprobe(self.ctx.root, timeout_s=self.ctx.settings.driver.modprobe_timeout_s)
        return self._loader

    async def _sim_inventory(self) -> Inventory | None:
        inventory = self.ctx.inventory()
        if inventory is None:
            try:
                inventory = await self.ctx.gpus.inventory()
            except Exception:  # the simulated backend may not be open in a one-shot
                return None
        return inventory

    def _library_version(self) -> str:
        files = self.assessment.facts.files if self.assessment and self.assessment.facts else None
        return files.library_version if files else "580.159.04"

    # ------------------------------------------------------------------------------------ daemon life

    async def start(self) -> None:
        self.set_status(Phase.STARTING)
        await self.reconcile()

    async def run(self, stop: asyncio.Event) -> None:
        """Re-check on runtime health, inventory and MIG changes (new MIG caps), and every ``driver.recheck_s``."""
        async with self.ctx.bus.subscribe(events.RUNTIME_HEALTHY, events.INVENTORY_CHANGED, events.MIG_CHANGED) as sub:
            if self.ctx.bus.last(events.RUNTIME_HEALTHY) != self._planned_health:
                await self.reconcile()  # changed between start() and this subscription
            while not stop.is_set():
                getter = asyncio.ensure_future(sub.get())
                stopper = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait(
                        {getter, stopper},
                        timeout=self.ctx.settings.driver.recheck_s,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    for t in (getter, stopper):
                        t.cancel()
                if stop.is_set():
                    return
                await self.reconcile()

    async def stop(self) -> None:
        self._publish(None, quiet=True)
        await super().stop()

    async def reconcile(self) -> planner.Assessment:
        """Observe, apply what is needed, observe again; then status, metrics and DRIVER_READY."""
        apply_error = ""
        plan = self.plan(await self.observe())
        if plan.steps:
            try:
                await self.apply(plan)
            except NodeAgentError as err:
                apply_error = str(err)
            except OSError as err:
                apply_error = f"driver step failed: {err}"
            self.plan(await self.observe())
        assessment = self.assessment
        assert assessment is not None
        self._report(assessment, apply_error)
        return assessment

    def _report(self, a: planner.Assessment, apply_error: str) -> None:
        failures = [*a.failures, apply_error] if apply_error else list(a.failures)
        files = a.facts.files if a.facts else None
        details: dict[str, Any] = {
            "driver_root": files.root if files else None,
            "layout": files.layout if files else None,
            "evidence": list(a.evidence),
            "warnings": list(a.warnings),
            "kernel_module_version": a.version_check.kernel if a.version_check else None,
            "library_version": a.version_check.library if a.version_check else None,
            "modules": list(a.facts.modules) if a.facts else [],
            "helpers": [h.describe() for h in a.facts.helpers] if a.facts else [],
        }
        ready = a.ready and not failures
        if failures:
            self.set_status(Phase.FAILED, "; ".join(failures), **details)
        elif not ready:
            pending = [s.target for s in (self.last_plan.steps if self.last_plan else ())]
            self.set_status(Phase.FAILED, f"driver not ready: pending {', '.join(pending)}", **details)
        elif a.warnings:
            self.set_status(Phase.DEGRADED, "; ".join(a.warnings), **details)
        else:
            self.set_status(Phase.RUNNING, "", **details)
        self._metrics.ready.set(1 if ready else 0)
        if a.version_check is not None:
            self._metrics.info.clear()
            self._metrics.info.labels(a.version_check.kernel, a.version_check.library).set(1)
            self._metrics.version_ok.set(1 if a.version_check.ok else 0)
        self._publish(a.facts if ready else None)

    def _publish(self, facts: DriverFacts | None, *, quiet: bool = False) -> None:
        if facts == self._published:
            return
        self._published = facts
        self.ctx.bus.publish(events.DRIVER_READY, facts)
        if quiet:
            return
        if facts is not None:
            self.log.info("driver_ready", root=facts.root, version=facts.kernel_version, modules=list(facts.modules))
        else:
            self.log.warning("driver_not_ready", reason=self.status().reason)
