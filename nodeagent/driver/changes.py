"""Whether anything the driver subsystem decides on may have changed since the last full gather.

A full gather (``observe.gather``) reads the driver root's files, /proc and /sys, every device node and
every process's name (to find the helper daemons). Once the driver is ready, almost every re-check
finds nothing new, so a re-check first takes a ``Probe``: /proc and /sys do not support inotify, so
their few small files that change with the driver (modules, majors, version, the GPU list) are read
and compared by bytes, and the helpers are checked by their known pids. The driver's files and the
device nodes live on ordinary file systems: the subsystem watches them with inotify (``watched_paths``
for ``backends.watch.FileWatcher``). Everything here is blocking and cheap; ``decide`` is pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodeagent.backends import chardevs
from nodeagent.backends.hostfs import Root
from nodeagent.driver import devnodes, helpers, modules, versions
from nodeagent.driver.observe import DriverObservation
from nodeagent.errors import HostPathError

PROBED_FILES = (modules.PROC_MODULES, devnodes.PROC_DEVICES, versions.PROC_VERSION, versions.SYS_VERSION)
PROBED_DIRS = (devnodes.PROC_GPUS, helpers.NVSWITCH_DEVICES)
FULL_GATHER_EVERY_S = 3600.0
"""A full gather at least this often anyway: a safety net for what neither the probe nor inotify sees."""


@dataclass(frozen=True)
class Probe:
    files: tuple[bytes | None, ...]
    """The bytes of each of PROBED_FILES (None: absent or unreadable)."""
    listings: tuple[tuple[str, ...], ...]
    """The names in each of PROBED_DIRS."""
    helpers: tuple[tuple[str, tuple[int, ...]], ...]
    """Per helper: its pids still running under its name; for a helper not seen running, every pid
    with its name (a scan of /proc, done only while one is missing)."""


def probe(root: Root, obs: DriverObservation | None) -> Probe:
    files = tuple(_read(root, path) for path in PROBED_FILES)
    listings = tuple(tuple(sorted(root.listdir(d))) for d in PROBED_DIRS)
    return Probe(files, listings, helper_pids(root, obs))


def after_gather(root: Root, before: Probe, obs: DriverObservation) -> Probe:
    """The baseline for the next probes: the files as probed before the gather (a change after that
    shows in the next probe), the helpers as this gather found them."""
    return Probe(before.files, before.listings, helper_pids(root, obs))


def helper_pids(root: Root, obs: DriverObservation | None) -> tuple[tuple[str, tuple[int, ...]], ...]:
    known = obs.helpers if obs is not None else ()
    scanned: dict[str, list[int]] | None = None
    alive: list[tuple[str, tuple[int, ...]]] = []
    for status in known:
        if status.running:
            alive.append((status.name, tuple(p for p in status.pids if _is(root, p, status.name))))
            continue
        if scanned is None:
            scanned = helpers.running(root)
        alive.append((status.name, tuple(sorted(scanned.get(status.name[: helpers.COMM_LEN], [])))))
    return tuple(alive)


def decide(
    before: Probe | None,
    now: Probe,
    *,
    settled: bool,
    files_changed: bool,
    since_full_s: float,
) -> str | None:
    """Why a full gather is needed now, or None when the last one still holds (pure)."""
    if before is None:
        return "first check"
    if not settled:
        return "the last check found the driver not ready or failing"
    if files_changed:
        return "driver files or device nodes changed"
    if since_full_s >= FULL_GATHER_EVERY_S:
        return "periodic full check"
    for path, old, new in zip(PROBED_FILES, before.files, now.files, strict=True):
        if old != new:
            return f"{path} changed"
    for path, old_names, new_names in zip(PROBED_DIRS, before.listings, now.listings, strict=True):
        if old_names != new_names:
            return f"{path} changed"
    if before.helpers != now.helpers:
        return "helper processes changed"
    return None


def watched_paths(root: Root, obs: DriverObservation) -> frozenset[str]:
    """Local paths of the driver's files and device nodes (ordinary file systems: inotify works)."""
    host: set[str] = set()
    files = obs.selection.files
    if files is not None:
        for lib in files.libraries:
            host.add(lib.path)
            host.update(f"{lib.directory}/{link}" for link in lib.links)
        host.update(files.binaries)
        host.update(files.firmware)
    host.update(chardevs.host_path(obs.dev_root, path) for path in obs.existing_nodes)
    local: set[str] = set()
    for path in host:
        try:
            local.add(str(root.resolve(path, follow_last=False)))
        except HostPathError:
            continue
    return frozenset(local)


def _read(root: Root, path: str) -> bytes | None:
    try:
        return root.read_bytes(path)
    except (HostPathError, OSError):
        return None


def _is(root: Root, pid: int, name: str) -> bool:
    try:
        comm = root.read_text(f"/proc/{pid}/comm")
    except (HostPathError, OSError):
        return False
    return comm is not None and comm.strip() == name[: helpers.COMM_LEN]
