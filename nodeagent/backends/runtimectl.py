"""Control of a container runtime daemon: version, config validation, restart or reload, health.

``HostRuntimeControl`` talks to the real daemon: the process behind the socket (found with
SO_PEERCRED), ``containerd --config FILE config dump`` for validation, ``systemctl``, SIGHUP or an
operator-given command to restart, ``ctr plugins ls`` / the HTTP ``/info`` endpoints for health, and
journald or a log file for the daemon's own error. ``SimRuntimeControl`` records what would be done
and reports a healthy runtime, so simulation runs need no daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import struct
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import structlog

from nodeagent.aio import run_blocking
from nodeagent.backends import procs
from nodeagent.backends.hostfs import Root
from nodeagent.errors import BackendUnavailable, CallTimeout, HostPathError

log = structlog.get_logger(__name__)

EngineName = Literal["containerd", "crio", "docker"]
RestartHow = Literal["systemd", "signal", "command", "none"]

_VERSION_RE = re.compile(r"\bv?(\d+\.\d+\.\d+)")
_LOG_ERROR_RE = re.compile(r"level=(error|fatal)|failed to load plugin io\.containerd\.grpc\.v1\.cri", re.IGNORECASE)


@dataclass(frozen=True)
class Target:
    """The daemon being configured, as the subsystem detected it (host paths)."""

    engine: EngineName
    socket: str
    config_path: str
    service: str = ""
    """systemd unit restarted (containerd) or reloaded (crio, docker)."""
    binaries: tuple[str, ...] = ()
    """Candidate host paths of the daemon binary, used when no process answers on the socket."""
    restart: RestartHow = "systemd"
    reload: bool = False
    """The daemon re-reads its config on SIGHUP / systemctl reload (crio >= 1.26, dockerd)."""
    restart_command: tuple[str, ...] = ()
    log_path: str = ""
    validate: bool = True
    """Run the daemon's own validation on ``config_path`` (not for templates the distribution renders)."""
    handler: str = ""
    """The runtime handler the change adds; validation checks it is in the daemon's effective config."""
    handler_binary: str = ""


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str = ""
    pid: int | None = None
    runtimes: frozenset[str] | None = None
    """Runtime handlers the daemon reports, where it reports them (dockerd)."""
    final: bool = False
    """Unhealthy for good: the daemon is up but refused the config (waiting longer will not help)."""


@dataclass(frozen=True)
class VersionInfo:
    version: str
    source: str
    """How it was found, e.g. '/proc/812/exe --version (the process behind /run/containerd/containerd.sock)'."""


class RuntimeControl(Protocol):
    async def version(self, target: Target) -> VersionInfo | None: ...

    async def validate(self, target: Target) -> str:
        """'' when the daemon accepts the config files as they are on disk now, else its error."""

    async def dump_config(self, target: Target) -> bytes: ...

    async def daemon_pid(self, target: Target) -> int | None: ...

    async def restart(self, target: Target) -> None:
        """Restart (or reload) as ``target.restart`` says; raise BackendUnavailable when it cannot."""

    async def health(self, target: Target) -> Health: ...

    async def recent_errors(self, target: Target, since: float) -> str:
        """The daemon's own error messages logged since ``since`` (epoch seconds), or ''."""


def parse_version(text: str) -> str:
    """'containerd github.com/containerd/containerd 1.6.20~ds1 ...' → '1.6.20'."""
    for token in text.split():
        m = _VERSION_RE.match(token)
        if m:
            return m.group(1)
    m = _VERSION_RE.search(text)
    return m.group(1) if m else ""


def peer_pid(path: Path, timeout_s: float = 2.0) -> int | None:
    """PID of the process serving a unix socket (SO_PEERCRED), or None when nothing answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except OSError:
            return None
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _, _ = struct.unpack("3i", creds)
    return pid or None


def cri_plugin_status(ctr_output: str) -> str | None:
    """Status column of the CRI plugin in ``ctr plugins ls`` output ('ok', 'error', 'skip'), if listed."""
    for line in ctr_output.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[0] == "io.containerd.grpc.v1" and cols[1] == "cri":
            return cols[-1]
    return None


def dumped_handler_problem(dump: bytes, handler: str, binary: str) -> str:
    """'' when ``containerd config dump`` output has runtime ``handler`` with BinaryName ``binary``.

    Exit 0 alone proves little: a file read as the wrong config version is accepted and ignored.
    """
    if not handler:
        return ""
    try:
        doc = tomllib.loads(dump.decode("utf-8", errors="replace"))
    except tomllib.TOMLDecodeError as err:
        return f"`config dump` printed no TOML: {err}"
    plugins = doc.get("plugins") or {}
    found: list[str] = []
    for key in ("io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri", "cri"):
        entry = (((plugins.get(key) or {}).get("containerd") or {}).get("runtimes") or {}).get(handler)
        if isinstance(entry, dict):
            have = (entry.get("options") or {}).get("BinaryName")
            if have == binary:
                return ""
            found.append(f"{key} has it with BinaryName {have!r}")
    detail = "; ".join(found) if found else "no such runtime under any CRI plugin"
    return (
        f"containerd's effective config (`config dump`) lacks runtime {handler!r} with BinaryName {binary!r} "
        f"({detail}): containerd would not use the file as written"
    )


def error_lines(text: str, limit: int = 5) -> str:
    """The last few error-looking lines of a daemon log."""
    hits = [line.strip() for line in text.splitlines() if _LOG_ERROR_RE.search(line)]
    return " | ".join(hits[-limit:])


class HostRuntimeControl:
    """The real daemon on this host (or under ``root``)."""

    def __init__(self, root: Root, *, call_timeout_s: float = 30.0, ctr: str = "ctr") -> None:
        self.root = root
        self.call_timeout_s = call_timeout_s
        self.ctr = ctr
        self._log_offsets: dict[str, int] = {}
        """Size of each log file at the last restart: only what the daemon wrote since is its error."""

    def _chroot(self, argv: Sequence[str]) -> list[str]:
        return list(argv) if self.root.is_host else ["chroot", str(self.root.path), *argv]

    def _local(self, host_path: str) -> Path:
        return self.root.resolve(host_path)

    async def daemon_pid(self, target: Target) -> int | None:
        try:
            local = self._local(target.socket)
        except HostPathError:
            return None
        return await run_blocking(peer_pid, local)

    async def _binary(self, target: Target) -> tuple[list[str], str] | None:
        """argv prefix that runs the daemon binary, and a description of where it came from."""
        pid = await self.daemon_pid(target)
        if pid is not None and Path(f"/proc/{pid}/exe").exists():
            return [f"/proc/{pid}/exe"], f"/proc/{pid}/exe (the process behind {target.socket})"
        for candidate in target.binaries:
            if self.root.is_file(candidate):
                if self.root.is_host:
                    return [candidate], candidate
                return self._chroot([candidate]), f"{candidate} under {self.root.path}"
        return None

    async def version(self, target: Target) -> VersionInfo | None:
        found = await self._binary(target)
        if found is None:
            return None
        argv, where = found
        try:
            done = await procs.run([*argv, "--version"], timeout_s=self.call_timeout_s)
        except (BackendUnavailable, CallTimeout) as err:
            log.warning("runtime_version_failed", binary=where, error=str(err))
            return None
        version = parse_version(done.stdout.decode(errors="replace"))
        if not done.ok or not version:
            return None
        return VersionInfo(version, f"{where} --version")

    async def validate(self, target: Target) -> str:
        if target.engine != "containerd" or not target.validate:
            return ""
        found = await self._binary(target)
        if found is None:
            return ""
        argv, _ = found
        if argv[0].startswith("/proc/") and not self.root.is_host:
            config = str(self._local(target.config_path))
        else:
            config = target.config_path
        try:
            done = await procs.run([*argv, "--config", config, "config", "dump"], timeout_s=self.call_timeout_s)
        except (BackendUnavailable, CallTimeout) as err:
            return str(err)
        if not done.ok:
            return done.describe_failure()
        return dumped_handler_problem(done.stdout, target.handler, target.handler_binary)

    async def dump_config(self, target: Target) -> bytes:
        found = await self._binary(target)
        if found is None:
            raise BackendUnavailable(f"no {target.engine} binary found to run `config dump`")
        argv, _ = found
        done = await procs.run([*argv, "--config", target.config_path, "config", "dump"], timeout_s=self.call_timeout_s)
        if not done.ok:
            raise BackendUnavailable(done.describe_failure())
        return done.stdout

    async def restart(self, target: Target) -> None:
        if target.log_path:
            with contextlib.suppress(OSError, HostPathError):
                self._log_offsets[target.log_path] = self._local(target.log_path).stat().st_size
        how = target.restart
        if how == "none":
            return
        if how == "command":
            done = await procs.run(list(target.restart_command), timeout_s=self.call_timeout_s)
            if not done.ok:
                raise BackendUnavailable(done.describe_failure())
            return
        if how == "systemd":
            verb = "reload" if target.reload else "restart"
            done = await procs.run(self._chroot(["systemctl", verb, target.service]), timeout_s=self.call_timeout_s)
            if not done.ok:
                raise BackendUnavailable(done.describe_failure())
            return
        pid = await self.daemon_pid(target)
        if pid is None:
            raise BackendUnavailable(f"nothing answers on {target.socket}; cannot signal {target.engine}")
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as err:
            raise BackendUnavailable(f"SIGHUP to {target.engine} pid {pid}: {err.strerror}") from err

    async def health(self, target: Target) -> Health:
        pid = await self.daemon_pid(target)
        if pid is None:
            return Health(False, f"nothing answers on {target.socket}")
        if target.engine == "containerd":
            return await self._containerd_health(target, pid)
        return await self._http_health(target, pid)

    async def _containerd_health(self, target: Target, pid: int) -> Health:
        address = str(self._local(target.socket))
        try:
            done = await procs.run([self.ctr, "--address", address, "plugins", "ls"], timeout_s=10)
        except BackendUnavailable:
            return Health(True, "socket answers (ctr not installed: CRI plugin not checked)", pid)
        except CallTimeout as err:
            return Health(False, str(err), pid)
        if not done.ok:
            return Health(False, done.describe_failure(), pid)
        status = cri_plugin_status(done.stdout.decode(errors="replace"))
        if status is None:
            return Health(False, "CRI plugin not listed by `ctr plugins ls`", pid)
        if status != "ok":
            return Health(False, f"CRI plugin status {status!r} in `ctr plugins ls`", pid, final=status == "error")
        return Health(True, "", pid)

    async def _http_health(self, target: Target, pid: int) -> Health:
        import aiohttp

        connector = aiohttp.UnixConnector(path=str(self._local(target.socket)))
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session,
                session.get("http://localhost/info") as resp,
            ):
                body = await resp.read()
                if resp.status != 200:
                    return Health(False, f"GET /info answered {resp.status}", pid)
        except (aiohttp.ClientError, TimeoutError) as err:
            return Health(False, f"GET /info on {target.socket}: {err}", pid)
        runtimes: frozenset[str] | None = None
        if target.engine == "docker":
            with contextlib.suppress(ValueError, AttributeError):
                runtimes = frozenset(json.loads(body).get("Runtimes") or {})
        return Health(True, "", pid, runtimes)

    async def recent_errors(self, target: Target, since: float) -> str:
        if target.log_path:
            try:
                data = await run_blocking(self.root.read_bytes, target.log_path)
            except HostPathError as err:
                return str(err)
            offset = self._log_offsets.get(target.log_path, 0)
            return error_lines((data or b"")[offset:].decode(errors="replace"))
        if target.service and target.restart == "systemd":
            argv = ["journalctl", "-u", target.service, "--since", f"@{int(since)}", "-o", "cat", "--no-pager"]
            try:
                done = await procs.run(self._chroot(argv), timeout_s=10)
            except (BackendUnavailable, CallTimeout):
                return ""
            return error_lines(done.stdout.decode(errors="replace"))
        return ""


@dataclass
class SimRuntimeControl:
    """A runtime that is always healthy; restarts are recorded, nothing is run."""

    version_text: str = "1.6.20"
    restarts: list[tuple[str, str, float]] = field(default_factory=list)
    healthy: bool = True
    validation_error: str = ""

    async def version(self, target: Target) -> VersionInfo | None:
        return VersionInfo(self.version_text, "simulated runtime") if target.engine == "containerd" else None

    async def validate(self, target: Target) -> str:
        return self.validation_error

    async def dump_config(self, target: Target) -> bytes:
        raise BackendUnavailable("simulated runtime has no `config dump`")

    async def daemon_pid(self, target: Target) -> int | None:
        return None

    async def restart(self, target: Target) -> None:
        self.restarts.append((target.engine, target.restart, time.time()))
        await asyncio.sleep(0)

    async def health(self, target: Target) -> Health:
        return Health(self.healthy, "" if self.healthy else "simulated failure")

    async def recent_errors(self, target: Target, since: float) -> str:
        return "" if self.healthy else "simulated failure"
