"""The driver subsystem: find the driver, load its modules, check versions, make device nodes, tell others.

Everything else waits for it through ``events.DRIVER_READY`` (payload: DriverFacts, or None when the
driver stops being ready). It loads modules and makes device nodes through the backends the composition
root chose (modprobe and mknod on a node, the sandbox's stand-ins in simulation).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from nodeagent import aio, events
from nodeagent.aio import run_blocking
from nodeagent.backends.kmod import ModuleLoader
from nodeagent.driver import changes, planner
from nodeagent.driver.declaration import DECLARATION
from nodeagent.driver.devnodes import DevNode
from nodeagent.driver.modules import ModuleLoad
from nodeagent.driver.observe import DriverObservation, gather
from nodeagent.errors import NodeAgentError, PermanentError
from nodeagent.events import Event
from nodeagent.loops import reconcile_loop
from nodeagent.model.driver import DriverFacts
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
    declaration = DECLARATION

    def __init__(self, ctx: Context, *, loader: ModuleLoader | None = None) -> None:
        super().__init__(ctx)
        self._loader = loader or ctx.backends.module_loader
        self._published: DriverFacts | None = _UNSET
        self._metrics = _metrics_for(ctx.registry)
        self.assessment: planner.Assessment | None = None
        self.checks = {"full": 0, "probe_only": 0}
        """Re-check passes: full gathers, and probes that found nothing changed (no gather)."""
        self._lock = asyncio.Lock()
        self._observed: DriverObservation | None = None
        self._probe: changes.Probe | None = None
        self._full_at = 0.0
        self._settled = False
        self._files_changed = False
        self._watched: frozenset[str] = frozenset()
        self._rewatch = asyncio.Event()

    # ------------------------------------------------------------------------------ one-shot contract

    async def observe(self) -> DriverObservation:
        ds = self.ctx.settings.driver
        return await run_blocking(gather, self.ctx.root, driver_root=ds.root, dev_root=ds.dev_root)

    def plan(self, observed: DriverObservation) -> Plan:
        """Pure: the same observation and settings give the same plan."""
        return planner.build_plan(planner.assess(observed, self.ctx.settings), observed)

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
                    await self._loader.load(load.module, load.params)
                except NodeAgentError as err:
                    raise PermanentError(f"loading {load.module} failed: {err}") from err
                self.log.info("driver_module_loaded", module=load.module, params=list(load.params))
                changed.append(f"module {load.module}")
            elif step.action == "create-device-node":
                node: DevNode = step.payload
                await run_blocking(
                    self.ctx.backends.device_nodes,
                    self.ctx.root,
                    self.ctx.settings.driver.dev_root,
                    node.path,
                    major=node.major,
                    minor=node.minor,
                    mode=node.mode,
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

    # ------------------------------------------------------------------------------------ daemon life

    async def start(self) -> None:
        self.set_status(Phase.STARTING)
        await self.reconcile()

    async def run(self, stop: asyncio.Event) -> None:
        """Re-check on inventory and MIG changes (new MIG caps) with a full gather; every ``driver.recheck_s``
        and when a watched file changes, with a full gather only if a cheap probe says something may have
        changed (see ``changes``)."""
        await aio.run_until_stopped(
            stop,
            {
                "driver:recheck": reconcile_loop(
                    stop,
                    self.ctx.bus,
                    (events.INVENTORY_CHANGED, events.MIG_CHANGED),
                    self._recheck,
                    interval_s=self.ctx.settings.driver.recheck_s,
                ),
                "driver:watch": self._watch_files(stop),
            },
        )

    async def _recheck(self, event: Event | None) -> None:
        if event is not None:
            await self.reconcile()
        else:
            await self.recheck()

    async def recheck(self) -> str | None:
        """Probe, and reconcile only when something may have changed; returns why it did, or None."""
        async with self._lock:
            now = await run_blocking(changes.probe, self.ctx.root, self._observed)
            reason = changes.decide(
                self._probe,
                now,
                settled=self._settled,
                files_changed=self._files_changed,
                since_full_s=time.monotonic() - self._full_at,
            )
            if reason is None:
                self.checks["probe_only"] += 1
                return None
            self.log.debug("driver_recheck", reason=reason)
            await self._reconcile(now)
            return reason

    async def _watch_files(self, stop: asyncio.Event) -> None:
        """Watch the driver's files and device nodes (inotify); restart when the set of paths changes."""
        while not stop.is_set():
            rewatch = self._rewatch = asyncio.Event()
            relay = asyncio.create_task(_set_when(stop, rewatch))
            try:
                if self._watched:
                    watcher = self.ctx.backends.file_watcher(
                        [Path(p) for p in sorted(self._watched)], poll_s=self.ctx.settings.driver.recheck_s
                    )
                    async for _changed in watcher.changes(rewatch):
                        self._files_changed = True
                        await self.recheck()
                else:
                    await rewatch.wait()
            finally:
                relay.cancel()

    async def stop(self) -> None:
        self._publish(None, quiet=True)
        await super().stop()

    async def reconcile(self) -> planner.Assessment:
        """Observe, apply what is needed, observe again; then status, metrics and DRIVER_READY."""
        async with self._lock:
            return await self._reconcile(await run_blocking(changes.probe, self.ctx.root, self._observed))

    async def _reconcile(self, probe: changes.Probe) -> planner.Assessment:
        # The probe was taken before the gather: a change after it shows in the next probe.
        self._files_changed = False
        self.checks["full"] += 1
        apply_error = ""
        observed = await self.observe()
        plan = self.plan(observed)
        if plan.steps:
            try:
                await self.apply(plan)
            except NodeAgentError as err:
                apply_error = str(err)
            except OSError as err:
                apply_error = f"driver step failed: {err}"
            observed = await self.observe()
            plan = self.plan(observed)
        self.last_plan = plan
        self.assessment = assessment = planner.assess(observed, self.ctx.settings)
        self._observed, self._full_at = observed, time.monotonic()
        if plan.steps or apply_error:  # what the apply changed (modules) is part of the next baseline
            self._probe = await run_blocking(changes.probe, self.ctx.root, observed)
        else:
            self._probe = await run_blocking(changes.after_gather, self.ctx.root, probe, observed)
        watched = await run_blocking(changes.watched_paths, self.ctx.root, observed)
        if watched != self._watched:
            self._watched = watched
            self._rewatch.set()
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
            "checks": dict(self.checks),
            "watched_files": len(self._watched),
        }
        ready = a.ready and not failures
        self._settled = ready
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


async def _set_when(stop: asyncio.Event, other: asyncio.Event) -> None:
    await stop.wait()
    other.set()
