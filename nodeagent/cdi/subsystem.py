"""The CDI subsystem: keep /var/run/cdi/nvidia.yaml in step with the driver and the GPU inventory.

It waits for ``events.DRIVER_READY`` and regenerates on ``INVENTORY_CHANGED`` / ``MIG_CHANGED`` (the
inventory comes from the GPU-state owner); the spec is written atomically and only when its content
changed. ``nodeagent revert`` restores what was there before the agent first wrote it. In a one-shot
command the driver facts come from the driver's public API (``nodeagent.driver.api``).
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nodeagent import aio, events
from nodeagent.aio import run_blocking
from nodeagent.backends.hostfs import Root
from nodeagent.cdi import coexist
from nodeagent.cdi import graphics as cdigraphics
from nodeagent.cdi import spec as cdispec
from nodeagent.cdi.declaration import DECLARATION
from nodeagent.driver import api as driver_api
from nodeagent.errors import NodeAgentError
from nodeagent.events import Event
from nodeagent.loops import reconcile_loop, watch_files
from nodeagent.model.driver import DriverFacts
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
    runtime_devices: str = ""
    """Simulation: the sandbox's runtime device directory as the host sees it, when it has one ('' on a node)."""


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


def _runtime_devices(root: Root, directory: str) -> str:
    """Where a simulated node's device nodes are for the container runtime (an absolute host path), or ''
    (a real node: its spec names /dev as it is)."""
    if not directory or root.is_host or not root.is_dir(directory):
        return ""
    return str(root.resolve(directory))


SHOWN_MISSING = 3
"""How many missing device nodes a warning names (a MIG node can miss 64 at once)."""


def missing_nodes_text(paths: Sequence[str]) -> str:
    """``16 device nodes not present yet: /dev/a, /dev/b, /dev/c and 13 more``."""
    shown = ", ".join(paths[:SHOWN_MISSING])
    more = f" and {len(paths) - SHOWN_MISSING} more" if len(paths) > SHOWN_MISSING else ""
    noun = "device node" if len(paths) == 1 else "device nodes"
    return f"{len(paths)} {noun} not present yet: {shown}{more}"


class CdiSubsystem(BaseSubsystem):
    declaration = DECLARATION

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._daemon = False
        self.spec: dict[str, Any] | None = None
        """The spec last written or checked by ``refresh`` (for /status and tests)."""
        self.force_revert = False
        """`nodeagent revert --force`: restore the original even over a spec someone changed since."""

    # ------------------------------------------------------------------------------ one-shot contract

    async def observe(self) -> CdiObservation:
        facts, problems = await self._driver_facts()
        inventory: Inventory | None = None
        try:
            inventory = await self.ctx.gpu_state.current()
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
        obs.runtime_devices = await run_blocking(_runtime_devices, self.ctx.root, self.ctx.backends.runtime_device_dir)
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
        # One-shot (plan, apply, cdi generate) or `--only cdi`: no driver subsystem publishes; ask its API.
        return await driver_api.current_facts(self.ctx.root, self.ctx.settings)

    def options(self, facts: DriverFacts) -> cdispec.CdiOptions:
        s = self.ctx.settings.cdi
        return cdispec.CdiOptions(
            kind=s.vendor_class,
            hook_path=s.hook_path,
            root_in_runtime=s.driver_root_in_runtime or facts.root_in_runtime,
            arch=cdispec.arch_of(facts, platform.machine()),
        )

    def spec_for(self, observed: CdiObservation) -> dict[str, Any] | None:
        """The spec for what was observed (pure); None without driver facts or inventory."""
        if observed.facts is None or observed.inventory is None:
            return None
        spec = cdispec.generate(
            observed.facts,
            observed.inventory,
            self.options(observed.facts),
            ipc=observed.ipc,
            graphics=observed.graphics,
        )
        if observed.runtime_devices:
            return cdispec.runtime_device_nodes(spec, observed.runtime_devices)
        return spec

    def plan(self, observed: CdiObservation) -> Plan:
        """Pure: the spec for the observation, and a write step when it differs from the file."""
        s = self.ctx.settings.cdi
        facts, inventory = observed.facts, observed.inventory
        spec = self.spec_for(observed)
        if facts is None or inventory is None or spec is None:
            return Plan(self.name, error="; ".join(observed.problems) or "no driver facts")
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
            warnings.append(missing_nodes_text(observed.missing_nodes))
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
        return Plan(self.name, steps=steps, evidence=evidence, warnings=tuple(warnings))

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
            if await run_blocking(self.ctx.journal.restore, self.ctx.root, path, force=self.force_revert):
                changed.append(path)
        return ApplyResult(changed=tuple(changed))

    # ------------------------------------------------------------------------------------ daemon life

    @property
    def _driver_subsystem_runs(self) -> bool:
        return self.ctx.board.tracks("driver")

    async def start(self) -> None:
        self._daemon = True
        self.set_status(Phase.STARTING)
        if self.ctx.bus.last(events.DRIVER_READY) is not None or not self._driver_subsystem_runs:
            await self.refresh()

    async def refresh(self) -> tuple[str, ...]:
        """Generate and write when changed; the status says what happened. Returns the paths written."""
        result = ApplyResult()
        try:
            observed = await self.observe()
            plan = self.plan(observed)
            self.last_plan = plan
            self.spec = self.spec_for(observed)
            if plan.error:
                self.set_status(Phase.FAILED, plan.error)
                return ()
            result = await self.apply(plan)
        except (NodeAgentError, OSError) as err:
            self.set_status(Phase.FAILED, f"cannot write the CDI spec: {err}")
            return ()
        details: dict[str, Any] = {"spec_path": self.ctx.settings.cdi.spec_path, "evidence": list(plan.evidence)}
        if self.spec is not None:
            details["devices"] = len(self.spec["devices"])
            details["cdi_version"] = self.spec["cdiVersion"]
        if plan.warnings:
            self.set_status(Phase.DEGRADED, "; ".join(plan.warnings), **details)
        else:
            self.set_status(Phase.RUNNING, "", **details)
        return result.changed

    async def run(self, stop: asyncio.Event) -> None:
        if self.status().phase not in (Phase.RUNNING, Phase.DEGRADED) and self._driver_subsystem_runs:
            if await aio.until_stopped(stop, self.ctx.bus.wait_for(events.DRIVER_READY)) is None:
                return
            await self.refresh()
        topics = (events.DRIVER_READY, events.INVENTORY_CHANGED, events.MIG_CHANGED)
        await aio.run_until_stopped(
            stop,
            {
                "cdi:events": reconcile_loop(stop, self.ctx.bus, topics, self._on_event),
                "cdi:drift": watch_files(
                    stop,
                    self.ctx.root,
                    [self.ctx.settings.cdi.spec_path],
                    self._on_drift,
                    poll_s=self.ctx.settings.watch.poll_s,
                    watcher=self.ctx.backends.file_watcher,
                ),
            },
        )

    async def _on_drift(self) -> None:
        """The spec may have changed (the watch's first look, our own write, or someone else): write it again
        when it differs (and the driver is ready). Drift is logged only when the spec had to be put back."""
        ready = self.ctx.bus.last(events.DRIVER_READY) is not None or not self._driver_subsystem_runs
        if ready and await self.refresh():
            self.log.info("cdi_spec_drift", path=self.ctx.settings.cdi.spec_path, put_back=True)

    async def _on_event(self, event: Event | None) -> None:
        if event is not None and event.topic == events.DRIVER_READY and event.payload is None:
            self.set_status(Phase.DEGRADED, "the driver is not ready; the last CDI spec is kept")
            return
        await self.refresh()
