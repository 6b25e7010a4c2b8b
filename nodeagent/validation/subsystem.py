"""The validation subsystem: the only writer of the validation status files other tools wait on.

It listens for ``DRIVER_READY``, ``RUNTIME_HEALTHY`` and ``MIG_READY`` and keeps ``driver-ready``,
``toolkit-ready`` and ``mig-ready`` in step; no other subsystem writes them. In a one-shot command
nobody publishes those events, so it asks the driver's public API for the facts (and leaves the files
whose condition it cannot know alone). ``nodeagent revert`` removes the files it wrote.
"""

from __future__ import annotations

import asyncio

from nodeagent import aio, events
from nodeagent.aio import run_blocking
from nodeagent.driver import api as driver_api
from nodeagent.errors import HostPathError, NodeAgentError
from nodeagent.events import Event
from nodeagent.loops import reconcile_loop, watch_files
from nodeagent.plan import Plan
from nodeagent.subsystem import ApplyResult, BaseSubsystem, Context, Phase
from nodeagent.validation import files
from nodeagent.validation.declaration import DECLARATION

_NOT_PUBLISHED = object()


class ValidationSubsystem(BaseSubsystem):
    declaration = DECLARATION

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)

    @property
    def directory(self) -> str:
        return self.ctx.settings.driver.validations_dir

    async def observe(self) -> files.Observed:
        bus = self.ctx.bus
        published = bus.last(events.DRIVER_READY, _NOT_PUBLISHED)
        if published is _NOT_PUBLISHED and not self.ctx.board.tracks("driver"):
            facts, _ = await driver_api.current_facts(self.ctx.root, self.ctx.settings)
            conditions = files.Conditions(facts, driver_known=True)
        elif published is _NOT_PUBLISHED:
            conditions = files.Conditions(None, driver_known=False)
        else:
            conditions = files.Conditions(published, driver_known=True)
        conditions = files.Conditions(
            conditions.driver,
            conditions.driver_known,
            runtime_healthy=bus.last(events.RUNTIME_HEALTHY),
            mig_ready=_mig_ready(bus.last(events.MIG_READY)),
        )
        existing = await run_blocking(self._read_all)
        return files.Observed(conditions, existing)

    def _read_all(self) -> dict[str, bytes | None]:
        found: dict[str, bytes | None] = {}
        for name in files.ALL:
            try:
                found[name] = self.ctx.root.read_bytes(files.path_of(self.directory, name))
            except HostPathError:
                found[name] = None
        return found

    def plan(self, observed: files.Observed) -> Plan:
        return files.plan(observed, self.directory, subsystem=self.name)

    async def apply(self, plan: Plan) -> ApplyResult:
        changed: list[str] = []
        for step in plan.steps:
            if step.action == "write-file":
                if await run_blocking(self.ctx.root.write_atomic, step.target, step.payload):
                    changed.append(step.target)
            elif step.action == "remove-file" and await run_blocking(self.ctx.root.remove, step.target):
                changed.append(step.target)
        return ApplyResult(changed=tuple(changed))

    async def revert(self) -> ApplyResult:
        """Remove every validation file: after a revert nothing the agent vouched for is vouched for."""
        removed = []
        for name in files.ALL:
            path = files.path_of(self.directory, name)
            if await run_blocking(self.ctx.root.remove, path):
                removed.append(path)
        return ApplyResult(changed=tuple(removed))

    # ------------------------------------------------------------------------------------ daemon life

    async def start(self) -> None:
        await self.reconcile(None)

    async def run(self, stop: asyncio.Event) -> None:
        topics = (events.DRIVER_READY, events.RUNTIME_HEALTHY, events.MIG_READY)
        paths = [files.path_of(self.directory, name) for name in files.ALL]
        await aio.run_until_stopped(
            stop,
            {
                "validation:events": reconcile_loop(stop, self.ctx.bus, topics, self.reconcile, initial=True),
                "validation:drift": watch_files(
                    stop,
                    self.ctx.root,
                    paths,
                    self._on_drift,
                    poll_s=self.ctx.settings.watch.poll_s,
                    watcher=self.ctx.backends.file_watcher,
                ),
            },
        )

    async def _on_drift(self) -> None:
        await self.reconcile(None)

    async def reconcile(self, event: Event | None) -> None:
        try:
            observed = await self.observe()
            plan = self.plan(observed)
            self.last_plan = plan
            if plan.steps:
                await self.apply(plan)
        except (NodeAgentError, OSError) as err:
            self.set_status(Phase.DEGRADED, f"cannot write the validation files: {err}")
            return
        present = [name for name in files.ALL if _present_after(observed, plan, name, self.directory)]
        self.set_status(Phase.RUNNING, "", directory=self.directory, present=present)


def _mig_ready(payload: object) -> bool | None:
    """``MIG_READY`` carries a ``MigReadiness`` (None before the MIG subsystem said anything)."""
    if payload is None:
        return None
    return bool(getattr(payload, "ready", payload))


def _present_after(observed: files.Observed, plan: Plan, name: str, directory: str) -> bool:
    path = files.path_of(directory, name)
    for step in plan.steps:
        if step.target == path:
            return step.action == "write-file"
    return observed.existing.get(name) is not None
