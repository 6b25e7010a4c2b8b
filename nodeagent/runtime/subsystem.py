"""The ``runtime`` subsystem: add the nvidia runtime to containerd, CRI-O or docker, and keep it there.

observe (files through the Root, the daemon's version) → plan (pure engine edits, a diff per file, the
restart each change costs) → apply (write, validate, restart, health check, rollback). ``run`` reconciles
once, then watches the managed files and re-applies when something removes the runtime (drift); a node
already in the desired state gets no writes and no restarts. ``revert`` restores the original bytes from
the backup journal. Nothing is reverted on shutdown: an agent restart must not bounce the runtime twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import posixpath
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodeagent import events
from nodeagent.aio import run_blocking, wait_or_stop
from nodeagent.backends.journal import RevertConflict
from nodeagent.backends.runtimectl import (
    RestartHow,
    RuntimeControl,
    Target,
    VersionInfo,
)
from nodeagent.errors import BackendUnavailable, CallTimeout, ConfigError, HostPathError, PermanentError
from nodeagent.plan import Disruption, Plan, Step, file_diff
from nodeagent.runtime import detect as det
from nodeagent.runtime import ownership
from nodeagent.runtime.declaration import DECLARATION
from nodeagent.runtime.engine import Edit, Engine, EngineKind, NodeConfig, Reader, RuntimeSpec
from nodeagent.runtime.engines import kind_of
from nodeagent.runtime.restart import restart_policy, transact, wait_healthy
from nodeagent.subsystem import ApplyResult, BaseSubsystem, Context, Phase

HEALTH_EVERY_S = 15.0
MAX_CONFIG_BYTES = 4 << 20
"""A runtime config file larger than this is refused by name (real ones are a few KiB)."""
READ_TIMEOUT_S = 20.0
"""Reading the runtime's files longer than this (a hung filesystem) is a named error, not a stuck agent."""
RUNTIME_DIRS = tuple(d + "/" for d in ownership.RUNTIME_DIRS)
"""Backed-up files under these directories belong to this subsystem (for revert)."""


@dataclass(frozen=True)
class FileChange:
    """Payload of a write-file / remove-file step: the bytes planned against, the new bytes (None: remove)."""

    old: bytes | None
    new: bytes | None
    target: Target


@dataclass(frozen=True)
class Observed:
    detected: det.Detected | None = None
    files: Mapping[str, bytes | None] = field(default_factory=dict)
    listings: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    version: VersionInfo | None = None
    dump: bytes | None = None
    error: str = ""
    evidence: tuple[str, ...] = ()
    bad_input: bool = False
    """The error is a bad file or setting (the CLI exits 2), not a host failure."""
    changed_since: tuple[str, ...] = ()
    """Files changed by someone else after the agent wrote them."""


def _read_timeout(what: str) -> str:
    return (
        f"{what} took longer than {READ_TIMEOUT_S:g}s (a hung filesystem or a blocking special file?); "
        "the read is abandoned and retried at the next reconcile"
    )


def _kind(root: Any, host_path: str) -> det.Kind | None:
    try:
        st = root.resolve(host_path).stat()
    except (OSError, HostPathError):
        return None
    if stat.S_ISSOCK(st.st_mode):
        return "socket"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    return "file" if stat.S_ISREG(st.st_mode) else "other"


class RuntimeSubsystem(BaseSubsystem):
    declaration = DECLARATION

    def __init__(self, ctx: Context, control: RuntimeControl | None = None) -> None:
        super().__init__(ctx)
        self.settings = ctx.settings.runtime
        self.control: RuntimeControl = control if control is not None else ctx.backends.runtime_control
        self.spec = RuntimeSpec(
            name=self.settings.runtime_class,
            path=self.settings.runtime_path,
            set_as_default=self.settings.set_as_default,
            enable_cdi=self.settings.enable_cdi,
        )
        self._lock = asyncio.Lock()
        self._version: VersionInfo | None = None
        self._healthy: bool | None = None
        self._watched: tuple[str, ...] = ()
        self._observed: Observed | None = None
        self.restarts = 0
        self.reconciles = 0
        self.bad_input = False
        """The last plan failed on a bad file or setting (the CLI exits 2)."""
        self.force_revert = False
        """`nodeagent revert --force`: restore originals even over files someone else changed since."""

    # ------------------------------------------------------------------------------------- observe

    async def observe(self) -> Observed:
        root = self.ctx.root
        paths = det.PROBED + tuple(p for p in (self.settings.config_path, self.settings.socket) if p)

        def _probe() -> det.Probe:
            kinds = {p: k for p in paths if (k := _kind(root, p)) is not None}
            texts: dict[str, bytes] = {}
            for p in det.READ:
                if kinds.get(p) == "file":
                    with contextlib.suppress(HostPathError):
                        texts[p] = root.read_bytes(p, max_bytes=MAX_CONFIG_BYTES) or b""
            return det.Probe(kinds, texts)

        try:
            probe = await asyncio.wait_for(run_blocking(_probe), READ_TIMEOUT_S)
        except TimeoutError:
            return Observed(error=_read_timeout("looking for the container runtime's files"))
        try:
            detected = det.detect(probe, self.settings)
        except ConfigError as err:
            return Observed(error=str(err), bad_input=True)
        kind = kind_of(detected)
        try:
            files, listings = await asyncio.wait_for(run_blocking(self._gather, kind, detected), READ_TIMEOUT_S)
        except TimeoutError:
            return Observed(detected, error=_read_timeout(f"reading {detected.config_path} and what it imports"))
        except ConfigError as err:
            return Observed(detected, error=str(err), evidence=detected.evidence, bad_input=True)
        except HostPathError as err:
            return Observed(detected, error=str(err), evidence=detected.evidence)
        version: VersionInfo | None = None
        dump: bytes | None = None
        if kind.versioned:
            version = await self._detect_version(detected)
            if self.settings.config_source == "command":
                try:
                    dump = await self.control.dump_config(self._target(detected))
                except (BackendUnavailable, CallTimeout) as err:
                    return Observed(detected, files, listings, version, error=f"{kind.name} config dump: {err}")
        changed = await run_blocking(self._changed_since_written, files)
        return Observed(detected, files, listings, version, dump, evidence=detected.evidence, changed_since=changed)

    def _changed_since_written(self, files: Mapping[str, bytes | None]) -> tuple[str, ...]:
        """Managed files someone else changed after the agent wrote them (revert will ask for --force)."""
        try:
            entries = self.ctx.journal.entries()
        except HostPathError:
            return ()

        def digest(data: bytes | None) -> str:  # '' for an absent file, as the journal notes a removal
            return "" if data is None else hashlib.sha256(data).hexdigest()

        return tuple(
            path
            for path, entry in entries.items()
            if path in files and entry.written is not None and digest(files[path]) != entry.written
        )

    def _gather(self, kind: EngineKind, d: det.Detected) -> tuple[dict[str, bytes | None], dict[str, tuple[str, ...]]]:
        """Read every file the engine needs (blocking; runs off the loop)."""
        root = self.ctx.root
        reader = Reader(lambda path: root.read_bytes(path, max_bytes=MAX_CONFIG_BYTES), root.list_files)
        kind.gather(d, reader)
        return reader.files, reader.listings

    async def _detect_version(self, d: det.Detected) -> VersionInfo | None:
        if self.settings.containerd_version:
            return VersionInfo(self.settings.containerd_version, "settings runtime.containerd_version")
        if self._version is None:
            self._version = await self.control.version(self._target(d))
        return self._version

    # ---------------------------------------------------------------------------------------- plan

    def _restart_how(self, d: det.Detected) -> RestartHow:
        return restart_policy(
            self.settings.restart, bool(self.settings.restart_command), distribution=d.distribution, reload=d.reload
        )

    def _target(self, d: det.Detected) -> Target:
        return Target(
            engine=d.engine,
            socket=d.socket,
            config_path=d.config_path,
            service=d.service,
            binaries=d.binaries,
            restart=self._restart_how(d),
            reload=d.reload,
            restart_command=tuple(self.settings.restart_command),
            log_path=self.settings.log_path,
            validate=not d.template,
            handler=self.spec.name if kind_of(d).checks_handler else "",
            handler_binary=self.spec.path,
        )

    def engine_for(self, observed: Observed) -> Engine:
        d = observed.detected
        assert d is not None
        version = observed.version.version if observed.version else ""
        return kind_of(d).build(d, NodeConfig(observed.files, observed.listings, version, observed.dump))

    def plan(self, observed: Observed) -> Plan:
        d = observed.detected
        evidence = list(observed.evidence)
        self.bad_input = observed.bad_input
        if d is None or observed.error:
            return Plan(self.name, evidence=tuple(evidence), error=observed.error or "nothing detected")
        kind = kind_of(d)
        evidence.append(f"engine {d.engine}, config {d.config_path}, socket {d.socket}")
        if observed.version:
            evidence.append(f"{kind.name} {observed.version.version} (from {observed.version.source})")
        elif kind.version_unknown:
            evidence.append(kind.version_unknown)
        if observed.dump is not None:
            evidence.append("options copied from `containerd config dump` (settings runtime.config_source = command)")
        try:
            edit: Edit = self.engine_for(observed).desired(self.spec)
        except ConfigError as err:
            self.bad_input = True
            return Plan(self.name, evidence=tuple(evidence), error=str(err))
        evidence += edit.evidence
        warnings = list(edit.warnings)
        warnings += [
            f"{path} was changed by someone else after nodeagent wrote it; `nodeagent revert` shows the "
            "difference and asks for --force before overwriting it"
            for path in observed.changed_since
        ]
        target = self._target(d)
        steps = [
            Step(
                "remove-file" if new is None else "write-file",
                path,
                edit.summaries[path],
                diff=file_diff(path, observed.files.get(path), new),
                payload=FileChange(observed.files.get(path), new, target),
            )
            for path, new in edit.writes.items()
        ]
        steps += [
            Step(
                f"change-{effect.setting}",
                effect.path,
                effect.summary,
                disruption=Disruption.RESTART,
                disrupts=f"every container {d.engine} starts from now on",
                payload=effect,
            )
            for effect in edit.effects
        ]
        if steps:
            steps.append(self._restart_step(d, target, warnings))
        if self.settings.restart == "signal" and kind.signal_restart:
            warnings.append(kind.signal_restart)
        return Plan(self.name, tuple(steps), tuple(evidence), tuple(warnings))

    def _restart_step(self, d: det.Detected, target: Target, warnings: list[str]) -> Step:
        unit = d.service if target.restart == "systemd" else d.engine
        if target.restart == "none":
            if d.distribution == "k0s":
                return Step(
                    "wait-runtime",
                    d.engine,
                    "k0s restarts containerd itself when its drop-in directory changes",
                    disruption=Disruption.RESTART,
                    disrupts="containerd (restarted by k0s)",
                    payload=target,
                )
            warnings.append(f"restart = none: the change takes effect at the next {d.engine} start")
            return Step("no-restart", d.engine, "runtime not restarted (restart = none)", payload=target)
        if target.reload:
            how = "SIGHUP" if target.restart == "signal" else f"`{' '.join(target.restart_command)}`"
            if target.restart == "systemd":
                how = f"systemctl reload {d.service}"
            return Step(
                "reload-runtime",
                unit,
                f"reload {d.engine} ({how}); running containers are not affected",
                disruption=Disruption.RELOAD,
                disrupts=d.engine,
                payload=target,
            )
        hits: str = d.engine
        if d.distribution in ("k3s", "rke2"):
            hits = f"{d.service} (the whole {d.distribution} service, which regenerates config.toml)"
        how = {
            "systemd": f"systemctl restart {d.service}",
            "signal": "SIGHUP (containerd exits; its supervisor starts it again)",
            "command": f"`{' '.join(target.restart_command)}`",
        }[target.restart]
        return Step(
            "restart-runtime",
            unit,
            f"restart {d.engine} ({how}); CRI calls in flight fail, containers keep running",
            disruption=Disruption.RESTART,
            disrupts=hits,
            payload=target,
        )

    # --------------------------------------------------------------------------------------- apply

    async def apply(self, plan: Plan) -> ApplyResult:
        if plan.error:
            self.set_status(Phase.FAILED, plan.error)
            self._publish(False)
            raise PermanentError(plan.error)
        changes = {s.target: s.payload for s in plan.steps if isinstance(s.payload, FileChange)}
        writes = {path: c.new for path, c in changes.items()}
        old = {path: c.old for path, c in changes.items()}
        if not writes:
            return ApplyResult()
        target: Target = next(iter(changes.values())).target
        await run_blocking(self._sweep_temp_files, list(writes))
        try:
            stale = await run_blocking(self._stale, old)
        except HostPathError as err:
            self.set_status(Phase.FAILED, str(err))
            raise PermanentError(str(err)) from err
        if stale:
            reason = f"{stale} changed since the plan was made; plan again"
            self.set_status(Phase.FAILED, reason)
            raise PermanentError(reason)
        outcome = await transact(
            root=self.ctx.root,
            journal=self.ctx.journal,
            control=self.control,
            target=target,
            writes=writes,
            old=old,
            timeout_s=self.settings.health_timeout_s,
        )
        if outcome.restarted:
            self.restarts += 1
            self._version = None
        restarted = (target.service or target.engine,) if outcome.restarted else ()
        if not outcome.ok:
            self.set_status(Phase.FAILED, outcome.error, rolled_back=outcome.rolled_back)
            self._publish(False)
            raise PermanentError(outcome.error)
        self.set_status(
            Phase.RUNNING, "", last_change=list(outcome.changed), restarts=self.restarts, evidence=list(plan.evidence)
        )
        if outcome.health is not None:
            self._publish(outcome.health.ok)
        return ApplyResult(changed=tuple(outcome.changed), restarted=restarted)

    def _sweep_temp_files(self, paths: list[str]) -> None:
        """Temp files a killed agent left next to the files it writes (and in its journal) go first."""
        dirs = {posixpath.dirname(p) for p in paths} | {self.ctx.journal.host_dir}
        for directory in sorted(dirs):
            with contextlib.suppress(HostPathError, OSError):
                for path in self.ctx.root.sweep_temp_files(directory):
                    self.log.info("runtime_stale_temp_file_removed", path=path)

    def _stale(self, old: Mapping[str, bytes | None]) -> str:
        for path, data in old.items():
            if self.ctx.root.read_bytes(path) != data:
                return path
        return ""

    # -------------------------------------------------------------------------------------- revert

    async def revert(self) -> ApplyResult:
        observed = await self.observe()
        managed = set(observed.files)
        if observed.detected is not None:
            managed.add(observed.detected.config_path)
        config_dir = posixpath.dirname(self.settings.config_path) + "/" if self.settings.config_path else ""
        prefixes = (*RUNTIME_DIRS, config_dir) if config_dir else RUNTIME_DIRS
        journal = self.ctx.journal

        def _restore() -> list[str]:
            mine = [p for p in journal.paths(required=True) if p in managed or p.startswith(prefixes)]
            if not self.force_revert:
                # every file checked before any is touched: a refusal leaves the node as it was
                conflicts = [c for c in (journal.conflict(self.ctx.root, p) for p in mine) if c]
                if conflicts:
                    raise RevertConflict(
                        ", ".join(p for p in mine if journal.conflict(self.ctx.root, p)), "\n".join(conflicts)
                    )
            return [p for p in mine if journal.restore(self.ctx.root, p, force=self.force_revert)]

        try:
            changed = await run_blocking(_restore)
        except HostPathError as err:  # JournalError, RevertConflict, or a host error: named, nothing guessed
            self.set_status(Phase.FAILED, f"revert refused: {err}")
            raise PermanentError(str(err)) from err
        restarted: tuple[str, ...] = ()
        d = observed.detected
        if changed and d is not None:
            target = self._target(d)
            if target.restart != "none":
                old_pid = None if target.reload else await self.control.daemon_pid(target)
                try:
                    await self.control.restart(target)
                except (BackendUnavailable, CallTimeout) as err:
                    self.set_status(Phase.FAILED, f"reverted files, but the restart failed: {err}")
                    raise PermanentError(str(err)) from err
                health = await wait_healthy(
                    self.control, target, timeout_s=self.settings.health_timeout_s, old_pid=old_pid
                )
                restarted = (target.service or target.engine,)
                if not health.ok:
                    self.set_status(Phase.FAILED, f"reverted files, but {d.engine} is unhealthy: {health.reason}")
                    raise PermanentError(health.reason)
        messages: tuple[str, ...] = ()
        if changed and d is not None and restarted:
            messages = await run_blocking(kind_of(d).revert_notes, d, self.spec, self.ctx.root.read_bytes)
        self._publish(False)
        self.set_status(Phase.STOPPED, "reverted", reverted=changed)
        return ApplyResult(changed=tuple(changed), restarted=restarted, messages=messages)

    # ----------------------------------------------------------------------------------------- run

    async def start(self) -> None:
        self.set_status(Phase.STARTING)
        observed = await self.observe()
        await run_blocking(self._sweep_temp_files, list(observed.files))

    async def run(self, stop: asyncio.Event) -> None:
        self._watched = await run_blocking(self._watch_list, await self.observe())
        health_task = asyncio.create_task(self._health_loop(stop), name="runtime-health")
        first = True
        try:
            while not stop.is_set():
                paths = self._watched
                local = [p for p in (self._local(h) for h in paths) if p is not None]
                watcher = self.ctx.backends.file_watcher(local, poll_s=self.ctx.settings.watch.poll_s)
                changes = watcher.changes(stop, initial=True)  # an async generator: closed explicitly below
                try:
                    async for changed in changes:
                        # the initial (empty) report comes once the watches are in place: reconcile then,
                        # so a change made meanwhile cannot slip between the look and the watch
                        if changed:
                            await self.reconcile("drift", changed=[str(p) for p in changed])
                        else:
                            await self.reconcile("start" if first else "rewatch")
                            first = False
                        if self._watched != paths:
                            break
                finally:
                    await changes.aclose()
        finally:
            health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await health_task

    def _local(self, host_path: str) -> Path | None:
        try:
            return self.ctx.root.resolve(host_path)
        except HostPathError:
            return None

    async def reconcile(self, reason: str, changed: list[str] | None = None) -> Plan:
        """observe → plan → apply when needed; never raises (the status says what went wrong)."""
        async with self._lock:
            self.reconciles += 1
            observed = await self.observe()
            plan = await run_blocking(self.plan, observed)  # parsing a big file must not stall /healthz
            self.last_plan = plan
            self._observed = observed
            self._watched = await run_blocking(self._watch_list, observed)
            if plan.error:
                self.set_status(Phase.FAILED, plan.error)
                self._publish(False)
                return plan
            if plan.empty:
                await self._check_health(observed)
                return plan
            if reason == "drift":
                self.log.warning(
                    "runtime_drift",
                    files=changed or [],
                    steps=[s.summary for s in plan.steps],
                    diff="".join(s.diff for s in plan.steps)[:4000],
                )
            try:
                result = await self.apply(plan)
            except PermanentError:
                return plan
            if reason == "drift":
                self.log.info("runtime_drift_repaired", changed=list(result.changed), restarted=list(result.restarted))
            if not result.restarted:
                await self._check_health(observed)
            self._watched = await run_blocking(self._watch_list, await self.observe())
            return plan

    def _watch_list(self, observed: Observed) -> tuple[str, ...]:
        if observed.detected is None:
            return tuple(p for p in det.PROBED if not p.endswith(".service"))
        try:
            engine_paths = self.engine_for(observed).watched()
        except ConfigError:
            engine_paths = ()
        return tuple(dict.fromkeys((*engine_paths, *observed.files)))

    async def _check_health(self, observed: Observed) -> None:
        d = observed.detected
        assert d is not None
        health = await self.control.health(self._target(d))
        details = {
            "engine": d.engine,
            "distribution": d.distribution,
            "config": d.config_path,
            "socket": d.socket,
            "version": observed.version.version if observed.version else "",
            "restarts": self.restarts,
            "evidence": list(self.last_plan.evidence) if self.last_plan else [],
            "warnings": list(self.last_plan.warnings) if self.last_plan else [],
        }
        if health.ok:
            self.set_status(Phase.RUNNING, "", **details)
        else:
            self.set_status(Phase.DEGRADED, f"{d.engine} not healthy: {health.reason}", **details)
        self._publish(health.ok)

    async def _health_loop(self, stop: asyncio.Event) -> None:
        while not await wait_or_stop(stop, HEALTH_EVERY_S):
            if self._status.phase == Phase.FAILED or self._lock.locked():
                continue
            async with self._lock:
                if self._observed is not None and self._observed.detected is not None:
                    await self._check_health(self._observed)

    def _publish(self, healthy: bool) -> None:
        if healthy != self._healthy:
            self._healthy = healthy
            self.ctx.bus.publish(events.RUNTIME_HEALTHY, healthy)

    async def stop(self) -> None:
        await super().stop()
