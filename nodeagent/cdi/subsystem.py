"""The CDI subsystem: keep /var/run/cdi/nvidia.yaml in step with the driver and the GPU inventory.

It waits for ``events.DRIVER_READY`` and regenerates on ``INVENTORY_CHANGED`` / ``MIG_CHANGED``; the
spec is written atomically and only when its content changed. ``nodeagent revert`` restores what was
there before the agent first wrote it.
"""

from __future__ import annotations

import asyncio
import platform
from dataclasses import dataclass, field
from typing import Any

from nodeagent import events
from nodeagent.aio import run_blocking
from nodeagent.backends.hostfs import Root
from nodeagent.cdi import coexist
from nodeagent.cdi import graphics as cdigraphics
from nodeagent.cdi import spec as cdispec
from nodeagent.driver.facts import DriverFacts
from nodeagent.errors import NodeAgentError
from nodeagent.model.gpu import Inventory
from nodeagent.plan import Plan, Step, file_diff
from nodeagent.subsystem import ApplyResult, BaseSubsystem, Context, Phase


@dataclass
class CdiObservation:
    facts: DriverFacts | None
    inventory: Inventory | None
    existing: bytes | None = None
    ipc: tuple[str, ...] = ()
    missing_nodes: tuple[str, ...] = ()
    hook_present: bool = True
    problems: list[str] = field(default_factory=list)
    graphics: cdigraphics.GraphicsFiles = field(default_factory=cdigraphics.GraphicsFiles)
    others: list[coexist.OtherSpec] = field(default_factory=list)
    """Other generators' specs for our kind (nvidia-cdi-refresh's, a manual nvidia-ctk one)."""
    other_bytes: dict[str, bytes | None] = field(default_factory=dict)


def _existing_ipc(root: Root, facts: DriverFacts) -> tuple[str, ...]:
    found = []
    for path in cdispec.IPC_PATHS:
        for base in dict.fromkeys((facts.root, "/")):
            candidate = path if base == "/" else base.rstrip("/") + path
            if root.exists(candidate):
                found.append(candidate)
                break
    return tuple(found)


def _missing_nodes(root: Root, facts: DriverFacts, inventory: Inventory) -> tuple[str, ...]:
    paths = cdispec.device_node_paths(inventory)
    prefix = "" if facts.dev_root == "/" else facts.dev_root.rstrip("/")
    return tuple(p for p in paths if not root.exists(prefix + p))


class CdiSubsystem(BaseSubsystem):
    name = "cdi"
    requires = ("driver",)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._daemon = False
        self._inventory: Inventory | None = None
        self.spec: dict[str, Any] | None = None
        """The last generated spec (for ``cdi generate`` and tests)."""

    # ------------------------------------------------------------------------------ one-shot contract

    async def observe(self) -> CdiObservation:
        facts, problems = await self._driver_facts()
        inventory = self._inventory or self.ctx.inventory()
        if inventory is None:
            try:
                inventory = await self.ctx.gpus.inventory()
            except NodeAgentError as err:
                problems.append(f"no GPU inventory: {err}")
        obs = CdiObservation(facts, inventory, problems=problems)
        settings = self.ctx.settings.cdi
        obs.existing = await run_blocking(self._read_existing, settings.spec_path)
        if facts is not None and inventory is not None:
            obs.ipc = await run_blocking(_existing_ipc, self.ctx.root, facts)
            obs.missing_nodes = await run_blocking(_missing_nodes, self.ctx.root, facts, inventory)
            arch = self.options(facts).arch
            obs.graphics = await run_blocking(cdigraphics.discover, self.ctx.root, facts, inventory, arch=arch)
        obs.hook_present = await run_blocking(self.ctx.root.is_file, settings.hook_path)
        journaled = set(await run_blocking(self.ctx.journal.entries))
        obs.others = await run_blocking(
            coexist.find_others, self.ctx.root, settings.vendor_class, settings.spec_path, journaled
        )
        for other in obs.others:
            obs.other_bytes[other.path] = await run_blocking(self._read_existing, other.path)
        return obs

    def _read_existing(self, path: str) -> bytes | None:
        try:
            return self.ctx.root.read_bytes(path)
        except NodeAgentError:
            return None

    async def _driver_facts(self) -> tuple[DriverFacts | None, list[str]]:
        facts: DriverFacts | None = self.ctx.bus.last(events.DRIVER_READY)
        if facts is not None or (self._daemon and self._driver_subsystem_runs):
            return facts, ([] if facts is not None else ["the driver is not ready"])
        # One-shot (plan, apply, cdi generate) or `--only cdi`: no driver subsystem publishes; look ourselves.
        from nodeagent.driver import planner
        from nodeagent.driver.observe import gather

        ds = self.ctx.settings.driver
        obs = await run_blocking(
            gather, self.ctx.root, driver_root=ds.root, dev_root=ds.dev_root, validations_dir=ds.validations_dir
        )
        assessment = planner.assess(obs, self.ctx.settings)
        if assessment.facts is None:
            reasons = assessment.failures or ("the driver is not ready (modules not loaded)",)
            return None, [f"driver not ready: {'; '.join(reasons)}"]
        return assessment.facts, []

    def options(self, facts: DriverFacts) -> cdispec.CdiOptions:
        s = self.ctx.settings.cdi
        return cdispec.CdiOptions(
            kind=s.vendor_class,
            hook_path=s.hook_path,
            root_in_runtime=s.driver_root_in_runtime or facts.root_in_runtime,
            arch=cdispec.arch_of(facts, platform.machine()),
        )

    def plan(self, observed: CdiObservation) -> Plan:
        s = self.ctx.settings.cdi
        facts, inventory = observed.facts, observed.inventory
        if facts is None or inventory is None:
            plan = Plan(self.name, error="; ".join(observed.problems) or "no driver facts")
            self.last_plan = plan
            return plan
        spec = cdispec.generate(facts, inventory, self.options(facts), ipc=observed.ipc, graphics=observed.graphics)
        self.spec = spec
        data = cdispec.render(spec, cdispec.format_for(s.spec_path))
        common = spec["containerEdits"]
        n_gpu = len(inventory.gpus)
        n_mig = sum(len(g.mig_devices) for g in inventory.gpus)
        evidence = (
            f"driver root {facts.root} (runtime sees {self.options(facts).root_in_runtime}), dev root {facts.dev_root}",
            f"{len(spec['devices'])} devices: {n_gpu} GPUs by index and UUID, {n_mig} MIG devices, all",
            f"{len(common['mounts'])} mounts: {len(facts.files.libraries)} libraries, {len(facts.files.binaries)} "
            f"binaries, {len(facts.files.firmware)} firmware files, {len(observed.ipc)} IPC sockets",
            f"{len(common['deviceNodes'])} control device nodes; hooks run {s.hook_path}",
            f"cdiVersion {spec['cdiVersion']} (lowest the content needs), kind {s.vendor_class}",
        )
        warnings = []
        if observed.missing_nodes:
            warnings.append(f"device nodes not present yet: {', '.join(observed.missing_nodes)}")
        if not observed.hook_present:
            warnings.append(
                f"hook binary {s.hook_path} not found: install nvidia-container-toolkit or set cdi.hook_path"
            )
        ours_present = observed.existing is not None and not any(o.path == s.spec_path for o in observed.others)
        decision = coexist.decide(observed.others, s.other_specs, s.spec_path, ours_present=ours_present)
        warnings += [decision.blocked] if decision.blocked else []
        warnings += list(decision.warnings)
        steps: tuple[Step, ...] = coexist.removal_steps(
            decision, {**observed.other_bytes, s.spec_path: observed.existing}
        )
        if decision.write_ours and observed.existing != data:
            summary = "write CDI spec" if observed.existing is None else "update CDI spec"
            steps += (
                Step(
                    "write-file",
                    s.spec_path,
                    f"{summary} ({len(spec['devices'])} devices, cdiVersion {spec['cdiVersion']})",
                    diff=file_diff(s.spec_path, observed.existing, data),
                    payload=data,
                ),
            )
        plan = Plan(self.name, steps=steps, evidence=evidence, warnings=tuple(warnings))
        self.last_plan = plan
        return plan

    async def apply(self, plan: Plan) -> ApplyResult:
        changed = []
        for step in plan.steps:
            if step.action == "write-file":
                wrote = await run_blocking(
                    self.ctx.root.write_atomic, step.target, step.payload, mode=0o644, journal=self.ctx.journal
                )
                if wrote:
                    changed.append(step.target)
                    self.log.info("cdi_spec_written", path=step.target, bytes=len(step.payload))
            elif step.action == "remove-file" and await run_blocking(
                self.ctx.root.remove, step.target, journal=self.ctx.journal
            ):
                changed.append(step.target)
                self.log.warning("cdi_spec_removed", path=step.target, reason=step.summary)
        return ApplyResult(changed=tuple(changed))

    async def revert(self) -> ApplyResult:
        spec_path = self.ctx.settings.cdi.spec_path
        entries = await run_blocking(self.ctx.journal.entries)
        # Our spec, and any other generator's spec we took over (kept in the journal).
        paths = [p for p in entries if p == spec_path or p.startswith(tuple(d + "/" for d in coexist.SPEC_DIRS))]
        changed = []
        for path in paths:
            if await run_blocking(self.ctx.journal.restore, self.ctx.root, path):
                changed.append(path)
        return ApplyResult(changed=tuple(changed))

    # ------------------------------------------------------------------------------------ daemon life

    @property
    def _driver_subsystem_runs(self) -> bool:
        return "driver" in self.ctx.statuses()

    async def start(self) -> None:
        self._daemon = True
        self.set_status(Phase.STARTING)
        if self.ctx.bus.last(events.DRIVER_READY) is not None or not self._driver_subsystem_runs:
            await self.refresh()

    async def refresh(self) -> None:
        """Generate and write when changed; the status says what happened."""
        try:
            plan = self.plan(await self.observe())
            if plan.error:
                self.set_status(Phase.FAILED, plan.error)
                return
            await self.apply(plan)
        except (NodeAgentError, OSError) as err:
            self.set_status(Phase.FAILED, f"cannot write the CDI spec: {err}")
            return
        details: dict[str, Any] = {"spec_path": self.ctx.settings.cdi.spec_path, "evidence": list(plan.evidence)}
        if self.spec is not None:
            details["devices"] = len(self.spec["devices"])
            details["cdi_version"] = self.spec["cdiVersion"]
        if plan.warnings:
            self.set_status(Phase.DEGRADED, "; ".join(plan.warnings), **details)
        else:
            self.set_status(Phase.RUNNING, "", **details)

    async def run(self, stop: asyncio.Event) -> None:
        topics = (events.DRIVER_READY, events.INVENTORY_CHANGED, events.MIG_CHANGED)
        async with self.ctx.bus.subscribe(*topics) as sub:
            if self.status().phase not in (Phase.RUNNING, Phase.DEGRADED) and self._driver_subsystem_runs:
                waiter = asyncio.ensure_future(self.ctx.bus.wait_for(events.DRIVER_READY))
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                if stop.is_set():
                    return
                await self.refresh()
            while not stop.is_set():
                getter = asyncio.ensure_future(sub.get())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if not getter.done():
                    getter.cancel()
                    return
                event = getter.result()
                if event.topic in (events.INVENTORY_CHANGED, events.MIG_CHANGED) and event.payload is not None:
                    self._inventory = event.payload
                if event.topic == events.DRIVER_READY and event.payload is None:
                    self.set_status(Phase.DEGRADED, "the driver is not ready; the last CDI spec is kept")
                    continue
                await self.refresh()
