"""The subsystem contract: what every subsystem offers the agent, and what the agent gives it.

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
import dataclasses
import importlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import structlog

from nodeagent.errors import NodeAgentError
from nodeagent.plan import Plan
from nodeagent.settings import scoped

if TYPE_CHECKING:
    from pathlib import Path

    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from nodeagent.backends.gpu.protocols import GpuBackend, MigControl
    from nodeagent.backends.hostfs import Root
    from nodeagent.backends.journal import BackupJournal
    from nodeagent.backends.kmod import ModuleLoader
    from nodeagent.backends.podresources import PodResourcesClient
    from nodeagent.backends.runtimectl import RuntimeControl
    from nodeagent.backends.watch import FileWatcher
    from nodeagent.events import EventBus
    from nodeagent.gpustate import GpuState
    from nodeagent.kube.client import KubeClient
    from nodeagent.nodegateway import NodeGateway
    from nodeagent.selfmetrics import SelfMetrics
    from nodeagent.settings import KubeSettings, Settings


@dataclass(frozen=True)
class Declaration:
    """Everything the agent knows about a subsystem before importing it, declared once in its package's
    ``declaration.py``: the table (``nodeagent.subsystem_table``), the import contracts' module lists, the
    reload rule and the settings view are all derived from it."""

    name: str
    target: str
    """``module:Class``, imported only when the subsystem is enabled."""
    requires: tuple[str, ...] = ()
    """Subsystems that must be ready before it starts (ignored when not enabled)."""
    needs_gpu: bool = True
    """False for subsystems that work without a GPU backend (runtime config before a driver exists)."""
    companion_of: tuple[str, ...] = ()
    """Chosen with any of these by ``--only`` (the validation files follow the driver and the runtime)."""
    settings: tuple[str, ...] = ()
    """The settings sections it reads: the only ones its view lets it read, and a reload that changes one of
    them restarts it."""

    @property
    def package(self) -> str:
        return self.target.partition(":")[0].rpartition(".")[0]

    def load(self) -> type:
        module, _, attr = self.target.partition(":")
        cls: type = getattr(importlib.import_module(module), attr)
        return cls


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


KubeConnector = Callable[["KubeSettings"], "KubeClient | None"]
"""Raises ConfigError or OSError when the client cannot be built yet (a kubeconfig not there)."""


class DeviceNodeMaker(Protocol):
    """Creates one character device node under a dev root (mknod on a node, a placeholder in simulation)."""

    def __call__(self, root: Root, dev_root: str, path: str, *, major: int, minor: int, mode: int) -> None: ...


PodResourcesConnector = Callable[[str], "PodResourcesClient"]
"""The kubelet PodResources client for a socket (a host path, through the root); the caller closes it."""


class WatcherMaker(Protocol):
    """A watch of some local files (inotify, else polling every ``poll_s``)."""

    def __call__(self, paths: Iterable[Path], *, poll_s: float) -> FileWatcher: ...


@dataclass(frozen=True)
class Backends:
    """The host-facing parts a subsystem may use, real or simulated; ``nodeagent.compose`` picks them."""

    gpus: GpuBackend
    runtime_control: RuntimeControl
    module_loader: ModuleLoader
    device_nodes: DeviceNodeMaker
    mig_control: MigControl | None = None
    """What changes MIG layouts (None: this backend cannot)."""
    kube: KubeConnector = field(default=lambda settings: None)
    """Builds the Kubernetes API client from the ``kube`` settings (None: no API server)."""
    pod_resources: PodResourcesConnector = field(kw_only=True)
    """Builds the kubelet PodResources client (metrics' pod attribution, MIG's holders, the device plugin)."""
    file_watcher: WatcherMaker = field(kw_only=True)
    """Watches local files (the drift watches, the driver's files)."""
    runtime_device_dir: str = field(default="", kw_only=True)
    """In simulation: the sandbox's directory (a host path under the root) holding the device nodes a container
    runtime can inject, which the CDI spec's ``hostPath`` names when the sandbox has it; "" on a node."""


class StatusBoard:
    """Where subsystems report their status and the agent (and /readyz, /metrics) reads it.

    The agent may override a subsystem's own status (pending, failed with a restart delay, stopped);
    an override lasts until the subsystem reports again. Watchers are woken on every change.
    """

    def __init__(self) -> None:
        self._own: dict[str, Callable[[], Status]] = {}
        self._overrides: dict[str, Status] = {}
        self._changed = asyncio.Event()
        self.readiness: Mapping[str, bool] = MappingProxyType({})
        """Each subsystem's readiness, replaced (never mutated) on the loop at every change, so a metrics
        render on a worker thread reads a consistent mapping."""

    def track(self, name: str, current: Callable[[], Status], *, initial: Status | None = None) -> None:
        self._own[name] = current
        if initial is not None:
            self._overrides[name] = initial
        self._notify()

    def reported(self, name: str) -> None:
        """A subsystem changed its own status: drop any override and wake the watchers."""
        self._overrides.pop(name, None)
        self._notify()

    def override(self, name: str, status: Status) -> None:
        self._overrides[name] = status
        self._notify()

    def statuses(self) -> dict[str, Status]:
        return {name: self._overrides.get(name) or own() for name, own in self._own.items()}

    def tracks(self, name: str) -> bool:
        return name in self._own

    async def wait_ready(self, names: tuple[str, ...]) -> None:
        """Return once every named (tracked) subsystem is ready."""
        while True:
            changed = self._changed
            statuses = self.statuses()
            if all(statuses[n].ready for n in names if n in statuses):
                return
            await changed.wait()

    def _notify(self) -> None:
        self.readiness = MappingProxyType({name: s.ready for name, s in self.statuses().items()})
        # A fresh Event per change: every waiter holding the old one wakes, none can miss a change.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


@dataclass
class Context:
    """Everything a subsystem is given; subsystems never reach for globals. Built by ``nodeagent.compose``."""

    settings: Settings
    root: Root
    backends: Backends
    gpu_state: GpuState
    """The one owner of GPU inventory, sampling, XID and health events."""
    bus: EventBus
    journal: BackupJournal
    registry: CollectorRegistry
    """Prometheus registry for the agent's own metrics (always served on /metrics)."""
    board: StatusBoard
    node_name: str
    self_metrics: SelfMetrics
    """The agent's own series that exist whatever subsystems run (loop lag, subsystem up)."""
    node: NodeGateway
    """The one Kubernetes client, watch and writer of the agent's own Node (``nodeagent.nodegateway``)."""
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    """(method, path) → handler, added by subsystems in __init__. The HTTP server looks the handler up at
    every request, so a subsystem restarted by a settings reload serves its routes from the new instance."""

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    def scoped(self, reader: str, sections: tuple[str, ...]) -> Context:
        """The same context (shared routes, bus, board) whose settings show only ``sections``."""
        return dataclasses.replace(self, settings=scoped(self.settings, sections, reader=reader))

    @property
    def gpus(self) -> GpuBackend:
        return self.backends.gpus


@runtime_checkable
class Service(Protocol):
    """A long-lived part of the daemon: started, run until stopped, stopped; it reports a status."""

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]]
    settings_sections: ClassVar[tuple[str, ...]]
    """The settings sections it reads; a reload that changes one of them restarts it."""

    async def start(self) -> None: ...

    async def run(self, stop: asyncio.Event) -> None: ...

    async def stop(self) -> None: ...

    def status(self) -> Status: ...


@runtime_checkable
class Reconciler(Protocol):
    """Something that changes the node: observe, a pure plan, apply (used by ``plan``/``apply`` and loops)."""

    name: ClassVar[str]

    async def observe(self) -> Any: ...

    def plan(self, observed: Any) -> Plan: ...

    async def apply(self, plan: Plan) -> ApplyResult: ...


@runtime_checkable
class Describes(Protocol):
    """A service that changes nothing but can say, for ``nodeagent plan``, what it would do."""

    name: ClassVar[str]

    async def describe(self) -> Plan: ...


Subsystem = Service
"""Every subsystem is a service; reconcilers additionally implement ``Reconciler``."""


@runtime_checkable
class Revertible(Protocol):
    """A subsystem whose changes ``nodeagent revert`` can undo."""

    async def revert(self) -> ApplyResult: ...


async def make_plan(sub: Reconciler) -> Plan:
    """observe + plan, with a failure turned into a Plan carrying the error; the plan is kept for /status."""
    try:
        plan = sub.plan(await sub.observe())
    except NodeAgentError as err:
        plan = Plan(sub.name, error=str(err))
    if isinstance(sub, BaseSubsystem):
        sub.last_plan = plan
    return plan


class BaseSubsystem:
    """Status bookkeeping, a logger bound to the subsystem's name, and the settings view of its declaration.

    A subclass sets ``declaration``; ``name``, ``requires`` and ``settings_sections`` follow from it.
    """

    declaration: ClassVar[Declaration | None] = None
    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    settings_sections: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.declaration is not None:
            cls.name = cls.declaration.name
            cls.requires = cls.declaration.requires
            cls.settings_sections = cls.declaration.settings

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx.scoped(self.name, self.settings_sections)
        """Its own view of the context: reading a settings section it does not declare raises."""
        self.log = structlog.get_logger(f"nodeagent.{self.name}").bind(subsystem=self.name)
        self._status = Status(Phase.PENDING)
        self.last_plan: Plan | None = None
        """The latest plan made for this subsystem (by ``make_plan``), shown in /status."""

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
        self.ctx.board.reported(self.name)
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
