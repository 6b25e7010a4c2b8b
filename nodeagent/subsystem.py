"""The subsystem contract (design.md, "The subsystem contract").

A subsystem has a ``name`` and the names of the subsystems it ``requires``. The agent gives it a
``Context`` and calls, in this order:

- ``start()``: acquire resources and make a first observation; raise TemporaryError to be retried;
- ``observe()`` → state, ``plan(state)`` → Plan (pure), ``apply(plan)`` → ApplyResult: used by
  ``nodeagent plan`` / ``apply`` and by the subsystem's own loop;
- ``run(stop)``: the long-lived loop (watch, poll, serve) until ``stop`` is set;
- ``stop()``: release resources, idempotent, bounded in time;
- ``status()``: cheap and synchronous, for /readyz, /status and ``nodeagent status``.

``BaseSubsystem`` holds the status bookkeeping so each subsystem only writes its own logic. State
transitions are logged once (phase changes), never on every tick.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import structlog

from nodeagent.plan import Plan

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from nodeagent.backends.gpu.protocols import GpuBackend
    from nodeagent.backends.hostfs import BackupJournal, Root
    from nodeagent.events import EventBus
    from nodeagent.model.gpu import Inventory
    from nodeagent.settings import Settings


class Phase(StrEnum):
    PENDING = "pending"
    """Waiting for the subsystems it requires."""
    STARTING = "starting"
    RUNNING = "running"
    DEGRADED = "degraded"
    """Running, but something is wrong (a GPU lost, no kubelet socket); still counts as ready."""
    FAILED = "failed"
    STOPPED = "stopped"
    DISABLED = "disabled"


READY_PHASES = frozenset({Phase.RUNNING, Phase.DEGRADED})


@dataclass(frozen=True)
class Status:
    phase: Phase
    reason: str = ""
    since: float = field(default_factory=time.time)
    details: Mapping[str, Any] = field(default_factory=dict)
    """Subsystem-specific facts for /status (e.g. the driver root chosen and its evidence)."""

    @property
    def ready(self) -> bool:
        return self.phase in READY_PHASES

    def to_json(self) -> dict[str, Any]:
        return {"phase": str(self.phase), "reason": self.reason, "since": self.since, "details": dict(self.details)}


@dataclass(frozen=True)
class ApplyResult:
    """What apply did: every changed target, and whether anything was restarted."""

    changed: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    messages: tuple[str, ...] = ()


Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


@dataclass
class Context:
    """Everything a subsystem is given; subsystems never reach for globals."""

    settings: Settings
    root: Root
    gpus: GpuBackend
    bus: EventBus
    journal: BackupJournal
    registry: CollectorRegistry
    """Prometheus registry for the agent's own metrics (served on /metrics with the GPU series)."""
    simulate: bool
    node_name: str
    statuses: Callable[[], Mapping[str, Status]] = lambda: {}
    """Current status of every subsystem (the metrics subsystem exports nodeagent_subsystem_up)."""
    inventory: Callable[[], Inventory | None] = lambda: None
    """Latest GPU inventory the agent holds."""
    routes: list[tuple[str, str, Handler]] = field(default_factory=list)
    """(method, path, handler) added by subsystems in __init__; the HTTP server mounts them."""
    on_status: Callable[[str, Status], None] = lambda name, status: None
    """Called by BaseSubsystem.set_status on every phase change (the agent wakes dependents with it)."""

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        self.routes.append((method, path, handler))

    @classmethod
    def create(
        cls,
        *,
        settings: Settings,
        root: Root,
        gpus: GpuBackend,
        simulate: bool,
        node_name: str,
        registry: CollectorRegistry | None = None,
        **hooks: Any,
    ) -> Context:
        """A context with a fresh event bus, the backup journal under ``agent.state_dir`` and a registry."""
        from prometheus_client import CollectorRegistry

        from nodeagent.backends.hostfs import BackupJournal
        from nodeagent.events import EventBus

        return cls(
            settings=settings,
            root=root,
            gpus=gpus,
            bus=EventBus(),
            journal=BackupJournal(root, settings.agent.state_dir),
            registry=registry if registry is not None else CollectorRegistry(auto_describe=True),
            simulate=simulate,
            node_name=node_name,
            **hooks,
        )


@runtime_checkable
class Subsystem(Protocol):
    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]]

    async def start(self) -> None: ...

    async def observe(self) -> Any: ...

    def plan(self, observed: Any) -> Plan: ...

    async def apply(self, plan: Plan) -> ApplyResult: ...

    async def run(self, stop: asyncio.Event) -> None: ...

    async def stop(self) -> None: ...

    def status(self) -> Status: ...


@runtime_checkable
class Revertible(Protocol):
    """A subsystem whose changes ``nodeagent revert`` can undo."""

    async def revert(self) -> ApplyResult: ...


class BaseSubsystem:
    """Status bookkeeping and a logger bound to the subsystem's name."""

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.log = structlog.get_logger(f"nodeagent.{self.name}").bind(subsystem=self.name)
        self._status = Status(Phase.PENDING)
        self.last_plan: Plan | None = None

    def status(self) -> Status:
        return self._status

    def set_status(self, phase: Phase, reason: str = "", **details: Any) -> None:
        """Record the phase; log only when phase or reason changes."""
        old = self._status
        merged = {**old.details, **details}
        if old.phase == phase and old.reason == reason:
            if merged != dict(old.details):
                self._status = Status(phase, reason, old.since, merged)
            return
        self._status = Status(phase, reason, time.time(), merged)
        self.ctx.on_status(self.name, self._status)
        event = f"{self.name}_{phase}"
        if phase == Phase.FAILED:
            self.log.error(event, reason=reason)
        elif phase == Phase.DEGRADED:
            self.log.warning(event, reason=reason)
        else:
            self.log.info(event, reason=reason) if reason else self.log.info(event)

    async def start(self) -> None:
        self.set_status(Phase.RUNNING)

    async def stop(self) -> None:
        self.set_status(Phase.STOPPED)
