"""Scriptable subsystems for the core tests (GPUs and contexts come from ``nodeagent.testing``)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from nodeagent import testing
from nodeagent.backends.hostfs import Root
from nodeagent.compose import Parts
from nodeagent.plan import Plan, Step
from nodeagent.settings import Settings
from nodeagent.subsystem import ApplyResult, BaseSubsystem, Context, Phase


class Scripted(BaseSubsystem):
    """A subsystem whose start/run behaviour a test scripts; records what happened to it."""

    name: ClassVar[str] = "scripted"
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        ctx: Context,
        *,
        name: str = "scripted",
        requires: tuple[str, ...] = (),
        fail_starts: int = 0,
        crash_runs: int = 0,
        stop_delay_s: float = 0.0,
        permanent: bool = False,
    ) -> None:
        self.name = name  # type: ignore[misc]
        self.requires = requires  # type: ignore[misc]
        super().__init__(ctx)
        self.fail_starts = fail_starts
        self.crash_runs = crash_runs
        self.stop_delay_s = stop_delay_s
        self.permanent = permanent
        self.calls: list[str] = []
        self.journal: list[str] | None = None
        self.running = asyncio.Event()

    async def start(self) -> None:
        self.calls.append("start")
        self._log("start")
        if self.fail_starts > 0:
            self.fail_starts -= 1
            if self.permanent:
                from nodeagent.errors import PermanentError

                raise PermanentError(f"{self.name} cannot start, ever")
            raise RuntimeError(f"{self.name} start failed")
        self.set_status(Phase.RUNNING)

    async def run(self, stop: asyncio.Event) -> None:
        self.calls.append("run")
        if self.crash_runs > 0:
            self.crash_runs -= 1
            raise RuntimeError(f"{self.name} crashed")
        self.running.set()
        await stop.wait()

    async def stop(self) -> None:
        self.calls.append("stop")
        self._log("stop")
        if self.stop_delay_s:
            await asyncio.sleep(self.stop_delay_s)
        self.set_status(Phase.STOPPED)

    async def observe(self) -> Any:
        return {"state": "observed"}

    def plan(self, observed: Any) -> Plan:
        return Plan(self.name, (Step("noop", "/nothing", "do nothing"),))

    async def apply(self, plan: Plan) -> ApplyResult:
        return ApplyResult(changed=("/nothing",))

    def _log(self, what: str) -> None:
        if self.journal is not None:
            self.journal.append(f"{what}:{self.name}")


def make_parts(tmp_root: Root, settings: Settings, subsystems: list[Any], ctx: Context | None = None) -> Parts:
    return testing.parts(ctx or make_context(tmp_root, settings), subsystems)


def make_context(root: Root, settings: Settings) -> Context:
    return testing.context(root, settings, gpus=testing.sim_gpus(2), node_name="test-node")
