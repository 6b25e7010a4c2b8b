"""The Agent: builds the context, starts subsystems in dependency order and supervises them.

- Every subsystem runs in one named, guarded task (its supervisor). The supervisor waits for the
  subsystems it requires to be ready (event-driven, through ``Context.on_status``), calls ``start()``
  then ``run(stop)``, and restarts it with exponential backoff and jitter when it fails. A failing
  subsystem never takes the others down.
- SIGTERM / SIGINT: STOPPING=1, then every subsystem is stopped in reverse order within
  ``agent.shutdown_timeout_s`` each; a hard-exit timer guarantees the process ends. Exit code 0.
- The HTTP listener cannot be opened (a busy port): one plain line on stderr naming ``--listen`` and
  ``NODEAGENT_AGENT__LISTEN`` besides the log line, and exit code 1 (``EXIT_LISTEN_FAILED``).
- SIGHUP: settings are loaded again; invalid new settings are rejected and the old ones stay.
- With NOTIFY_SOCKET set: READY=1 once started, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from nodeagent import aio, events
from nodeagent.backends.sdnotify import Notifier
from nodeagent.compose import Parts
from nodeagent.errors import ConfigError, NodeAgentError, PermanentError, TemporaryError
from nodeagent.model.gpu import Inventory
from nodeagent.plan import Plan
from nodeagent.settings import Settings, changed_sections
from nodeagent.subsystem import BaseSubsystem, Phase, Service, Status

log = structlog.get_logger("nodeagent.agent")

SettingsLoader = Callable[[], Settings]
HEARTBEAT_S = 1.0
AGENT_SECTIONS = ("agent", "simulation", "gpu")
"""Settings read while composing the agent: a change of these needs a restart of the process."""


EXIT_LISTEN_FAILED = 1
"""``nodeagent run`` could not open its HTTP listener (the port is taken, or not ours to bind)."""


def listen_problem(listen: str, err: OSError) -> str:
    """One plain line: why ``listen`` cannot be bound and how to pick another address."""
    if err.errno == errno.EADDRINUSE:
        why = "the address is already in use (another nodeagent, or dcgm-exporter, which also uses 9400?)"
    elif err.errno == errno.EACCES:
        why = "permission denied (ports below 1024 need root)"
    else:
        why = err.strerror or str(err)
    return (
        f"cannot listen on {listen}: {why}; choose another address with --listen HOST:PORT or "
        "NODEAGENT_AGENT__LISTEN=HOST:PORT (`make run PORT=9500`)"
    )


class Agent:
    """The long-running daemon: supervision, HTTP, signals, sd_notify, settings reload."""

    def __init__(
        self,
        parts: Parts,
        *,
        reload_settings: SettingsLoader | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.parts = parts
        self.ctx = parts.ctx
        self.board = parts.ctx.board
        self.reload_settings = reload_settings
        self.notifier = notifier or Notifier()
        self.subsystems: dict[str, Service] = {s.name: s for s in parts.subsystems}
        self.stop_event = asyncio.Event()
        self._sub_stop = {name: asyncio.Event() for name in self.subsystems}
        self._supervisors: dict[str, asyncio.Task[Any]] = {}
        self._restarts: dict[str, int] = dict.fromkeys(self.subsystems, 0)
        self._tasks: list[asyncio.Task[Any]] = []
        self._reloads: list[asyncio.Task[Any]] = []
        self.started_at = time.time()
        self.last_heartbeat = time.monotonic()
        self.loop_lag_s = 0.0
        for name, sub in self.subsystems.items():
            self._track(name, sub)

    def _track(self, name: str, sub: Service) -> None:
        self.board.track(name, sub.status, initial=Status(Phase.PENDING, "waiting to start"))

    # ------------------------------------------------------------------------------------------ status

    def _override(self, name: str, status: Status) -> None:
        self.board.override(name, status)

    def statuses(self) -> dict[str, Status]:
        return self.board.statuses()

    def ready(self) -> bool:
        return all(s.ready for s in self.statuses().values())

    @property
    def inventory(self) -> Inventory | None:
        return self.ctx.gpu_state.inventory

    def last_plans(self) -> dict[str, Plan]:
        plans: dict[str, Plan] = {}
        for name, sub in self.subsystems.items():
            plan = getattr(sub, "last_plan", None)
            if isinstance(plan, Plan):
                plans[name] = plan
        return plans

    def describe(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "simulate": self.parts.simulated,
            "root": str(self.ctx.root.path),
            "node_name": self.ctx.node_name,
        }

    # ------------------------------------------------------------------------------------------- run

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        from nodeagent.httpserver import HttpServer

        http = HttpServer(self, self.ctx.routes, self.ctx.registry)
        try:
            await http.start(self.ctx.settings.agent.listen)
        except OSError as err:
            listen = self.ctx.settings.agent.listen
            log.error("http_listen_failed", listen=listen, error=str(err))
            print(f"nodeagent: {listen_problem(listen, err)}", file=sys.stderr)  # for a person, not a log reader
            return EXIT_LISTEN_FAILED
        log.info(
            "agent_started",
            listen=http.address,
            backend=self.ctx.gpus.kind,
            root=str(self.ctx.root.path),
            subsystems=list(self.subsystems),
            simulate=self.parts.simulated,
        )
        if self.ctx.gpu_state.inventory is None:
            await self.ctx.gpu_state.refresh()
        self._tasks.append(self._forever(self._heartbeat(), "heartbeat"))
        self._tasks.append(self._forever(self.ctx.gpu_state.run(self.stop_event), "gpu-state"))
        if self.notifier.watchdog_interval_s:
            self._tasks.append(self._forever(self._watchdog(), "watchdog"))
        for name, sub in self.subsystems.items():
            self._supervisors[name] = self._forever(self._supervise(sub), f"subsystem:{name}")
        self.notifier.send("READY=1")
        await self.stop_event.wait()

        timer = aio.hard_exit_timer(self.ctx.settings.agent.hard_exit_timeout_s)
        self.notifier.send("STOPPING=1")
        log.info("agent_stopping")
        await aio.cancel_and_wait(self._reloads, timeout_s=1.0)
        await self._shutdown()
        await http.stop()
        await aio.cancel_and_wait(self._tasks, timeout_s=1.0)
        with contextlib.suppress(Exception):
            await self.ctx.node.close()
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

    async def _shutdown(self) -> None:
        """Stop subsystems in reverse dependency order, each within the shutdown timeout."""
        for name in reversed(list(self.subsystems)):
            await self._stop_one(name)

    async def _stop_one(self, name: str) -> None:
        timeout = self.ctx.settings.agent.shutdown_timeout_s
        self._sub_stop[name].set()
        task = self._supervisors.pop(name, None)
        if task is not None:
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

    async def _supervise(self, sub: Service) -> None:
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
                    await aio.until_stopped(stop, self.board.wait_ready(requires))
                    if stop.is_set():
                        return
                started = time.monotonic()
                try:
                    self._override(name, Status(Phase.STARTING))
                    if isinstance(sub, BaseSubsystem):
                        sub.set_status(Phase.STARTING)
                        self.board.reported(name)
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

    def _fail(self, sub: Service, reason: str, *, permanent: bool) -> None:
        log.error("subsystem_failed", subsystem=sub.name, reason=reason, permanent=permanent)
        status = Status(Phase.FAILED, reason, details={"permanent": permanent, "restarts": self._restarts[sub.name]})
        self._override(sub.name, status)

    # ------------------------------------------------------------------------------------- background

    async def _heartbeat(self) -> None:
        """Proves the loop is responsive (/healthz) and measures its lag."""
        loop = asyncio.get_running_loop()
        while not self.stop_event.is_set():
            expected = loop.time() + HEARTBEAT_S
            if await aio.wait_or_stop(self.stop_event, HEARTBEAT_S):
                return
            self.loop_lag_s = max(0.0, loop.time() - expected)
            self.ctx.self_metrics.loop_lag.set(self.loop_lag_s)
            self.last_heartbeat = time.monotonic()

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval_s or 1.0
        while not await aio.wait_or_stop(self.stop_event, interval):
            self.notifier.send("WATCHDOG=1")

    # ---------------------------------------------------------------------------------------- reload

    def _on_sighup(self) -> None:
        if self.reload_settings is None:
            return
        try:
            new = self.reload_settings()
        except ConfigError as err:
            log.error("settings_reload_rejected", error=str(err))
            return
        self._reloads = [t for t in self._reloads if not t.done()]
        self._reloads.append(aio.guarded_task(self.apply_settings(new), name="settings-reload"))

    async def apply_settings(self, new: Settings) -> list[str]:
        """The reload rule: every subsystem that reads a changed section is restarted with the new settings.

        Sections read while composing the agent (``agent``, ``simulation``, ``gpu``) cannot change in a
        running process: they are logged as needing a restart and keep their old values. Returns the names
        of the subsystems restarted.
        """
        old = self.ctx.settings
        changed = changed_sections(old, new)
        if not changed:
            log.info("settings_reload_unchanged")
            return []
        frozen = [section for section in changed if section in AGENT_SECTIONS]
        kept = {section: getattr(old, section) for section in frozen}
        self.ctx.settings = new.with_sections(kept) if kept else new
        effective = set(changed) - set(frozen)
        affected = [
            name for name, sub in self.subsystems.items() if set(getattr(sub, "settings_sections", (name,))) & effective
        ]
        log.info("settings_reloaded", changed=changed, restarting=affected, needs_agent_restart=frozen)
        for name in affected:
            await self._restart_one(name)
        self.ctx.bus.publish(events.SETTINGS_RELOADED, self.ctx.settings)
        return affected

    async def _restart_one(self, name: str) -> None:
        """Stop a subsystem and start a fresh instance of it, built from the current settings."""
        if self.stop_event.is_set():
            return
        await self._stop_one(name)
        fresh: Service = type(self.subsystems[name])(self.ctx)  # type: ignore[call-arg]
        self.subsystems[name] = fresh
        self._sub_stop[name] = asyncio.Event()
        self._track(name, fresh)
        self._supervisors[name] = self._forever(self._supervise(fresh), f"subsystem:{name}")
