"""The Agent: builds the context, starts subsystems in dependency order and supervises them.

- Every subsystem runs in one named, guarded task (its supervisor). The supervisor waits for the
  subsystems it requires to be ready (event-driven, through ``Context.on_status``), calls ``start()``
  then ``run(stop)``, and restarts it with exponential backoff and jitter when it fails. A failing
  subsystem never takes the others down.
- SIGTERM / SIGINT: STOPPING=1, then every subsystem is stopped in reverse order within
  ``agent.shutdown_timeout_s`` each; a hard-exit timer guarantees the process ends. Exit code 0.
- SIGHUP: settings are loaded again; invalid new settings are rejected and the old ones stay.
- With NOTIFY_SOCKET set: READY=1 once started, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Gauge, PlatformCollector, ProcessCollector

from nodeagent import aio, events, subsystem_table
from nodeagent.backends.gpu.protocols import GpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.backends.sdnotify import Notifier
from nodeagent.errors import ConfigError, NodeAgentError, PermanentError, TemporaryError
from nodeagent.model.gpu import Inventory
from nodeagent.plan import Plan
from nodeagent.settings import Settings
from nodeagent.subsystem import BaseSubsystem, Context, Phase, Status, Subsystem

log = structlog.get_logger("nodeagent.agent")

SettingsLoader = Callable[[], Settings]
INVENTORY_REFRESH_S = 30.0
HEARTBEAT_S = 1.0


def node_name(settings: Settings, env: Mapping[str, str]) -> str:
    return settings.agent.node_name or env.get("NODE_NAME", "") or socket.gethostname()


def make_registry() -> CollectorRegistry:
    """The agent's own Prometheus registry, with process and platform metrics."""
    reg = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    return reg


@dataclass
class Parts:
    """What every command needs: the context and the enabled subsystems, built but not started."""

    ctx: Context
    subsystems: list[Subsystem]
    inventory: Inventory | None = None
    statuses: dict[str, Status] = field(default_factory=dict)


def build(
    settings: Settings,
    *,
    root: Root,
    gpus: GpuBackend,
    simulate: bool,
    env: Mapping[str, str],
    only: list[str] | None = None,
) -> Parts:
    """Build the context and construct the enabled subsystems (they register their HTTP routes here)."""
    ctx = Context.create(
        settings=settings,
        root=root,
        gpus=gpus,
        simulate=simulate,
        node_name=node_name(settings, env),
        registry=make_registry(),
    )
    subsystems: list[Subsystem] = []
    for entry in subsystem_table.enabled(settings, only or []):
        cls = entry.load()
        subsystems.append(cls(ctx))
    parts = Parts(ctx=ctx, subsystems=subsystems)
    ctx.inventory = lambda: parts.inventory
    return parts


class Agent:
    """The long-running daemon: supervision, HTTP, signals, sd_notify."""

    def __init__(
        self,
        parts: Parts,
        *,
        reload_settings: SettingsLoader | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.parts = parts
        self.ctx = parts.ctx
        self.reload_settings = reload_settings
        self.notifier = notifier or Notifier()
        self.subsystems = {s.name: s for s in parts.subsystems}
        self.stop_event = asyncio.Event()
        self._sub_stop = {name: asyncio.Event() for name in self.subsystems}
        self._overrides: dict[str, Status] = {n: Status(Phase.PENDING, "waiting to start") for n in self.subsystems}
        self._status_changed = asyncio.Event()
        self._restarts: dict[str, int] = dict.fromkeys(self.subsystems, 0)
        self._tasks: list[asyncio.Task[Any]] = []
        self.started_at = time.time()
        self.last_heartbeat = time.monotonic()
        self.loop_lag_s = 0.0
        self.ctx.on_status = self._on_status
        self.ctx.statuses = self.statuses
        self._loop_lag_gauge = Gauge(
            "nodeagent_loop_lag_seconds",
            "Event-loop lag measured by the heartbeat task (seconds late).",
            registry=self.ctx.registry,
        )

    # ------------------------------------------------------------------------------------------ status

    def _on_status(self, name: str, status: Status) -> None:
        self._overrides.pop(name, None)
        self._notify_status()

    def _override(self, name: str, status: Status) -> None:
        self._overrides[name] = status
        self._notify_status()

    def _notify_status(self) -> None:
        # A fresh Event per change: every waiter holding the old one wakes, none can miss a change.
        changed, self._status_changed = self._status_changed, asyncio.Event()
        changed.set()

    def statuses(self) -> dict[str, Status]:
        return {name: self._overrides.get(name) or sub.status() for name, sub in self.subsystems.items()}

    def ready(self) -> bool:
        return all(s.ready for s in self.statuses().values())

    def last_plans(self) -> dict[str, Plan]:
        plans: dict[str, Plan] = {}
        for name, sub in self.subsystems.items():
            plan = getattr(sub, "last_plan", None)
            if isinstance(plan, Plan):
                plans[name] = plan
        return plans

    async def _wait_ready(self, names: tuple[str, ...]) -> None:
        while True:
            changed = self._status_changed
            statuses = self.statuses()
            if all(statuses[n].ready for n in names if n in statuses):
                return
            await changed.wait()

    # ------------------------------------------------------------------------------------------- run

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        from nodeagent.httpserver import HttpServer

        http = HttpServer(self)
        try:
            await http.start(self.ctx.settings.agent.listen)
        except OSError as err:
            log.error("http_listen_failed", listen=self.ctx.settings.agent.listen, error=str(err))
            return 1
        log.info(
            "agent_started",
            listen=http.address,
            backend=self.ctx.gpus.kind,
            root=str(self.ctx.root.path),
            subsystems=list(self.subsystems),
            simulate=self.ctx.simulate,
        )
        await self._refresh_inventory()
        self._tasks.append(self._forever(self._heartbeat(), "heartbeat"))
        self._tasks.append(self._forever(self._inventory_loop(), "inventory"))
        if self.notifier.watchdog_interval_s:
            self._tasks.append(self._forever(self._watchdog(), "watchdog"))
        supervisors = [
            self._forever(self._supervise(sub), f"subsystem:{name}") for name, sub in self.subsystems.items()
        ]
        self.notifier.send("READY=1")
        await self.stop_event.wait()

        timer = aio.hard_exit_timer(self.ctx.settings.agent.hard_exit_timeout_s)
        self.notifier.send("STOPPING=1")
        log.info("agent_stopping")
        await self._shutdown(supervisors)
        await http.stop()
        await aio.cancel_and_wait(self._tasks, timeout_s=1.0)
        with contextlib.suppress(Exception):
            await self.ctx.gpus.close()
        timer.cancel()
        self.notifier.close()
        log.info("agent_stopped")
        return 0

    def _forever(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[Any]:
        return aio.guarded_task(coro, name=name, forever=True, stopping=self.stop_event)

    def request_stop(self, reason: str = "") -> None:
        if not self.stop_event.is_set():
            log.info("stop_requested", reason=reason)
            self.stop_event.set()

    async def _shutdown(self, supervisors: list[asyncio.Task[Any]]) -> None:
        """Stop subsystems in reverse dependency order, each within the shutdown timeout."""
        timeout = self.ctx.settings.agent.shutdown_timeout_s
        by_name = dict(zip(self.subsystems, supervisors, strict=True))
        for name in reversed(list(self.subsystems)):
            self._sub_stop[name].set()
            task = by_name[name]
            done, _ = await asyncio.wait([task], timeout=timeout)
            if not done:
                log.warning("subsystem_stop_timeout", subsystem=name, timeout_s=timeout)
                await aio.cancel_and_wait([task], timeout_s=1.0)
            sub = self.subsystems[name]
            try:
                await asyncio.wait_for(sub.stop(), timeout)
            except Exception as err:  # a failing stop must not prevent the others from stopping
                log.warning("subsystem_stop_failed", subsystem=name, error=repr(err))
            self._override(name, Status(Phase.STOPPED))

    async def _supervise(self, sub: Subsystem) -> None:
        """Start, run and restart one subsystem until the agent stops."""
        name = sub.name
        stop = self._sub_stop[name]
        settings = self.ctx.settings.agent
        backoff = settings.restart_backoff_initial_s
        bound = structlog.contextvars.bind_contextvars(subsystem=name)
        try:
            while not stop.is_set():
                requires = tuple(r for r in sub.requires if r in self.subsystems)
                if requires and not all(self.statuses()[r].ready for r in requires):
                    self._override(name, Status(Phase.PENDING, f"waiting for {', '.join(requires)}"))
                    waiter = asyncio.ensure_future(self._wait_ready(requires))
                    stopper = asyncio.ensure_future(stop.wait())
                    await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    stopper.cancel()
                    if stop.is_set():
                        return
                started = time.monotonic()
                try:
                    self._override(name, Status(Phase.STARTING))
                    if isinstance(sub, BaseSubsystem):
                        self._overrides.pop(name, None)
                        sub.set_status(Phase.STARTING)
                    await sub.start()
                    await sub.run(stop)
                    if stop.is_set():
                        return
                    raise TemporaryError("run() returned while the agent is running")
                except asyncio.CancelledError:
                    raise
                except (PermanentError, ConfigError) as err:
                    self._fail(sub, str(err), permanent=True)
                    await stop.wait()
                    return
                except Exception as err:
                    reason = str(err) if isinstance(err, NodeAgentError) else f"{type(err).__name__}: {err}"
                    self._fail(sub, reason, permanent=False)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(sub.stop(), settings.shutdown_timeout_s)
                    if time.monotonic() - started > 10 * backoff:
                        backoff = settings.restart_backoff_initial_s  # it ran well for a while
                    retry_after = getattr(err, "retry_after_s", None)
                    delay = retry_after or backoff * random.uniform(0.8, 1.2)  # jitter, not crypto
                    self._restarts[name] += 1
                    self._override(
                        name,
                        Status(Phase.FAILED, reason, details={"restarts": self._restarts[name], "retry_in_s": delay}),
                    )
                    if await aio.wait_or_stop(stop, delay):
                        return
                    backoff = min(backoff * 2, settings.restart_backoff_max_s)
        finally:
            for key in bound:
                structlog.contextvars.unbind_contextvars(key)

    def _fail(self, sub: Subsystem, reason: str, *, permanent: bool) -> None:
        log.error("subsystem_failed", subsystem=sub.name, reason=reason, permanent=permanent)
        status = Status(Phase.FAILED, reason, details={"permanent": permanent, "restarts": self._restarts[sub.name]})
        self._override(sub.name, status)

    # ------------------------------------------------------------------------------------- background

    async def _refresh_inventory(self) -> None:
        try:
            inventory = await self.ctx.gpus.inventory()
        except NodeAgentError as err:
            log.warning("inventory_failed", error=str(err))
            return
        if inventory != self.parts.inventory:
            changed = self.parts.inventory is not None
            self.parts.inventory = inventory
            self.ctx.bus.publish(events.INVENTORY_CHANGED, inventory)
            if changed:
                log.info("inventory_changed", gpus=len(inventory.gpus))

    async def _inventory_loop(self) -> None:
        await aio.periodic(
            self._refresh_inventory, interval_s=INVENTORY_REFRESH_S, stop=self.stop_event, run_first=False
        )

    async def _heartbeat(self) -> None:
        """Proves the loop is responsive (/healthz) and measures its lag."""
        loop = asyncio.get_running_loop()
        while not self.stop_event.is_set():
            expected = loop.time() + HEARTBEAT_S
            if await aio.wait_or_stop(self.stop_event, HEARTBEAT_S):
                return
            self.loop_lag_s = max(0.0, loop.time() - expected)
            self._loop_lag_gauge.set(self.loop_lag_s)
            self.last_heartbeat = time.monotonic()

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval_s or 1.0
        while not await aio.wait_or_stop(self.stop_event, interval):
            self.notifier.send("WATCHDOG=1")

    def _on_sighup(self) -> None:
        if self.reload_settings is None:
            return
        try:
            new = self.reload_settings()
        except ConfigError as err:
            log.error("settings_reload_rejected", error=str(err))
            return
        old = self.ctx.settings
        if new == old:
            log.info("settings_reload_unchanged")
            return
        restart_needed = [
            key for key in ("root", "listen", "state_dir") if getattr(new.agent, key) != getattr(old.agent, key)
        ]
        if new.simulation != old.simulation or new.gpu != old.gpu:
            restart_needed.append("simulation/gpu")
        self.ctx.settings = new
        self.ctx.bus.publish(events.SETTINGS_RELOADED, new)
        log.info("settings_reloaded", needs_agent_restart=restart_needed)
