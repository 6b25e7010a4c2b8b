"""Watch a set of files for changes: inotify (asyncinotify) on their directories, polling as a fallback.

Config files are usually replaced by rename (atomic writes), so the watch is on each file's directory
and filters by name; a directory that does not exist yet, or a host without inotify, is polled instead.
``changes()`` yields the set of watched paths that changed, after a short quiet period so that a burst
of events (write temp file, rename) is reported once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import structlog

from nodeagent.aio import until_stopped, wait_or_stop

log = structlog.get_logger(__name__)

Signature = tuple[int, int, int, int] | None
"""(inode, size, mtime_ns, mode) of a file, or None when absent."""


def signature(path: Path) -> Signature:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)


class FileWatcher:
    """Reports changes of some files; ``mode`` is ``inotify`` or ``poll`` once started."""

    def __init__(
        self,
        paths: Iterable[Path],
        *,
        poll_s: float = 1.0,
        settle_s: float = 0.05,
        use_inotify: bool = True,
    ) -> None:
        self.paths = frozenset(p.absolute() for p in paths)
        self.poll_s = poll_s
        self.settle_s = settle_s
        self.use_inotify = use_inotify
        self.mode = ""

    async def changes(self, stop: asyncio.Event, *, initial: bool = False) -> AsyncGenerator[set[Path], None]:
        """Yield sets of changed paths until ``stop`` is set.

        ``initial``: first yield an empty set as soon as the watches are in place, so the caller can
        look at the files knowing that any later change will be reported (no gap between the two).
        """
        inotify = self._open_inotify() if self.use_inotify else None
        if inotify is None:
            self.mode = "poll"
            seen = {p: signature(p) for p in self.paths}
            if initial:
                yield set()
            async for changed in self._poll(stop, self.paths, seen):
                yield changed
            return
        self.mode = "inotify"
        watched_dirs = {p.parent for p in self.paths if p.parent.is_dir()}
        unwatched = frozenset(p for p in self.paths if p.parent not in watched_dirs)
        queue: asyncio.Queue[set[Path]] = asyncio.Queue()
        tasks = [asyncio.create_task(self._pump_inotify(inotify, queue), name="watch-inotify")]
        if unwatched:
            seen = {p: signature(p) for p in unwatched}
            tasks.append(asyncio.create_task(self._pump_poll(stop, unwatched, seen, queue), name="watch-poll"))
        try:
            if initial:
                yield set()
            while not stop.is_set():
                got = await until_stopped(stop, queue.get())
                if got is None:
                    break
                changed = got
                await asyncio.sleep(self.settle_s)  # let a write-then-rename burst finish
                while not queue.empty():
                    changed |= queue.get_nowait()
                yield changed
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            inotify.close()

    def _open_inotify(self) -> Any:
        try:
            from asyncinotify import Inotify, Mask
        except ImportError:
            return None
        try:
            inotify = Inotify()
        except OSError as err:
            log.warning("watch_inotify_unavailable", error=str(err))
            return None
        mask = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.CREATE | Mask.DELETE | Mask.ATTRIB
        for d in sorted({p.parent for p in self.paths}):
            if not d.is_dir():
                continue
            try:
                inotify.add_watch(d, mask)
            except OSError as err:
                log.warning("watch_inotify_failed", directory=str(d), error=str(err))
                inotify.close()
                return None
        return inotify

    async def _pump_inotify(self, inotify: Any, queue: asyncio.Queue[set[Path]]) -> None:
        async for event in inotify:
            if event.path is None:
                continue
            path = Path(os.fspath(event.path)).absolute()
            if path in self.paths:
                queue.put_nowait({path})

    async def _pump_poll(
        self, stop: asyncio.Event, paths: frozenset[Path], seen: dict[Path, Signature], queue: asyncio.Queue[set[Path]]
    ) -> None:
        async for changed in self._poll(stop, paths, seen):
            queue.put_nowait(changed)

    async def _poll(
        self, stop: asyncio.Event, paths: frozenset[Path], seen: dict[Path, Signature]
    ) -> AsyncIterator[set[Path]]:
        while True:
            if await wait_or_stop(stop, self.poll_s):
                return
            now = {p: signature(p) for p in paths}
            changed = {p for p in paths if now[p] != seen[p]}
            seen = now
            if changed:
                yield changed
