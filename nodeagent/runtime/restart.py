"""Write → validate → restart → health check → rollback, as one transaction.

The new files are written atomically (originals kept in the backup journal). Before the runtime is
touched, the daemon validates them (containerd: ``config dump``); a refusal restores the old bytes and
nothing is restarted. After the restart (or reload) the runtime must answer on its socket, and for
containerd its CRI plugin must load, within ``timeout_s``; otherwise the old files are put back, the
runtime is restarted again, and the failure carries the runtime's own error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog

from nodeagent.aio import run_blocking
from nodeagent.backends.hostfs import Root
from nodeagent.backends.journal import BackupJournal
from nodeagent.backends.runtimectl import Health, RestartHow, RuntimeControl, Target
from nodeagent.errors import BackendUnavailable, CallTimeout, HostPathError

log = structlog.get_logger("nodeagent.runtime")

POLL_S = 0.2


def restart_policy(mode: str, has_command: bool, *, distribution: str, reload: bool) -> RestartHow:
    """How a config change reaches the daemon, from ``runtime.restart`` and the detected layout.

    ``none``/``signal`` are taken as asked; an operator's restart command wins over systemd; ``auto``
    leaves k0s alone (it restarts containerd itself when containerd.d changes) and reloads the daemons
    that re-read their config on SIGHUP (CRI-O, dockerd); everything else is a systemd restart.
    """
    if mode in ("none", "signal"):
        return "none" if mode == "none" else "signal"
    if has_command:
        return "command"
    if mode == "auto" and distribution == "k0s":
        return "none"
    if mode == "auto" and reload:
        return "signal"
    return "systemd"


@dataclass
class Outcome:
    ok: bool
    changed: list[str] = field(default_factory=list)
    restarted: bool = False
    rolled_back: bool = False
    error: str = ""
    health: Health | None = None


async def write_files(root: Root, journal: BackupJournal, files: Mapping[str, bytes | None]) -> list[str]:
    """Write (or remove, for None) each file atomically; return the paths that changed."""

    def _write() -> list[str]:
        changed: list[str] = []
        before = {path: root.read_bytes(path) for path in files}
        try:
            for path, data in files.items():
                done = (
                    root.remove(path, journal=journal)
                    if data is None
                    else root.write_atomic(path, data, journal=journal)
                )
                if done:
                    changed.append(path)
        except HostPathError:
            _put_back(root, journal, {p: before[p] for p in changed})  # nothing half-applied
            raise
        return changed

    return await run_blocking(_write)


def _put_back(root: Root, journal: BackupJournal, files: Mapping[str, bytes | None]) -> None:
    for path, data in files.items():
        try:
            if data is None:
                root.remove(path, journal=journal)
            else:
                root.write_atomic(path, data, journal=journal)
        except HostPathError as err:
            log.error("runtime_put_back_failed", path=path, error=str(err))


async def wait_healthy(
    control: RuntimeControl, target: Target, *, timeout_s: float, old_pid: int | None = None
) -> Health:
    """Poll health until ok (and, after a restart, served by a new process) or the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    health = Health(False, "not checked")
    while True:
        health = await control.health(target)
        fresh = old_pid is None or health.pid is None or health.pid != old_pid
        if health.ok and fresh:
            return health
        if health.ok and not fresh:
            health = Health(False, f"still the old process {old_pid} behind {target.socket}", health.pid)
        elif health.final and fresh:
            return health  # the new process refused the config: waiting longer will not help
        if loop.time() >= deadline:
            return health
        await asyncio.sleep(POLL_S)


async def _restart_and_check(control: RuntimeControl, target: Target, timeout_s: float) -> Health:
    restarting = target.restart != "none" and not target.reload
    old_pid = await control.daemon_pid(target) if restarting else None
    try:
        await control.restart(target)
    except (BackendUnavailable, CallTimeout) as err:
        return Health(False, f"restart failed: {err}")
    return await wait_healthy(control, target, timeout_s=timeout_s, old_pid=old_pid)


async def transact(
    *,
    root: Root,
    journal: BackupJournal,
    control: RuntimeControl,
    target: Target,
    writes: Mapping[str, bytes | None],
    old: Mapping[str, bytes | None],
    timeout_s: float,
    validate: bool = True,
) -> Outcome:
    """Apply ``writes`` with rollback to ``old``; restart per ``target.restart`` only if a file changed."""
    try:
        changed = await write_files(root, journal, writes)
    except HostPathError as err:
        log.error("runtime_files_not_written", error=str(err))
        return Outcome(False, error=f"{err}; nothing was changed, the runtime was not restarted")
    if not changed:
        return Outcome(True)
    log.info("runtime_files_written", files=changed)
    if validate:
        problem = await control.validate(target)
        if problem:
            await write_files(root, journal, {p: old.get(p) for p in changed})
            log.error("runtime_config_rejected", error=problem, restored=changed)
            return Outcome(
                False, changed, error=f"{target.engine} rejected the new config: {problem}", rolled_back=True
            )
    if target.restart == "none":
        return Outcome(True, changed)
    since = time.time()
    health = await _restart_and_check(control, target, timeout_s)
    if health.ok:
        log.info("runtime_restarted", engine=target.engine, how=target.restart, reload=target.reload)
        return Outcome(True, changed, restarted=True, health=health)
    own = await control.recent_errors(target, since)
    error = f"{target.engine} not healthy after {'reload' if target.reload else 'restart'}: {health.reason}"
    if own:
        error += f"; {target.engine} said: {own}"
    log.error("runtime_unhealthy_rolling_back", error=error, restored=changed)
    await write_files(root, journal, {p: old.get(p) for p in changed})
    again = await _restart_and_check(control, target, timeout_s)
    if not again.ok:
        error += f"; after restoring the old files it is still unhealthy: {again.reason}"
    return Outcome(False, changed, restarted=True, rolled_back=True, error=error, health=again)
