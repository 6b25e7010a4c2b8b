"""The reconcile loop every reconciling subsystem runs: on start, on the events it cares about, and on a timer.

One loop, written once: it waits for the first of (stop, an event on the subscription, the interval
elapsing) and calls ``reconcile`` with the event that woke it (None for the timer). The subscription's
queue is bounded and drops the oldest event, so a burst never builds a backlog.

``watch_files`` is the drift watch of the files a subsystem owns: someone deletes or edits one, the owner
reconciles and puts it back (the runtime config, the CDI spec, the validation files).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from nodeagent import aio
from nodeagent.backends.hostfs import Root
from nodeagent.backends.watch import FileWatcher
from nodeagent.errors import NodeAgentError
from nodeagent.events import Event, EventBus

if TYPE_CHECKING:
    from nodeagent.subsystem import WatcherMaker

Reconcile = Callable[[Event | None], Awaitable[None]]


async def reconcile_loop(
    stop: asyncio.Event,
    bus: EventBus,
    topics: tuple[str, ...],
    reconcile: Reconcile,
    *,
    interval_s: float | None = None,
    wanted: Callable[[Event], bool] = lambda event: True,
    initial: bool = False,
) -> None:
    """Call ``reconcile(event)`` for every wanted event on ``topics`` and every ``interval_s``, until ``stop``.

    With ``initial``, one pass runs as soon as the subscription exists, so an event published between the
    caller's last look and the subscription is never missed.
    """
    async with bus.subscribe(*topics) as sub:
        if initial and not stop.is_set():
            await reconcile(None)
        while not stop.is_set():
            if interval_s is None:
                event = await aio.until_stopped(stop, sub.get())
                if event is None:
                    return
            else:
                try:
                    event = await asyncio.wait_for(aio.until_stopped(stop, sub.get()), interval_s)
                except TimeoutError:
                    event = None
                if stop.is_set():
                    return
            if event is not None and not wanted(event):
                continue
            await reconcile(event)


async def watch_files(
    stop: asyncio.Event,
    root: Root,
    host_paths: Sequence[str],
    on_change: Callable[[], Awaitable[None]],
    *,
    poll_s: float = 1.0,
    watcher: WatcherMaker = FileWatcher,
) -> None:
    """The drift watch: call ``on_change`` whenever one of these files (host paths, through the root) is
    changed, replaced or deleted by someone, until ``stop``. The owner then puts back what it owns.

    ``on_change`` also runs once as soon as the watches are in place, so a change made before cannot slip
    through the gap between the owner's last look and the watch."""
    local = []
    for path in host_paths:
        try:
            local.append(root.resolve(path))
        except NodeAgentError:
            continue  # a path that escapes the root is never watched (nor written)
    changes = watcher(local, poll_s=poll_s).changes(stop, initial=True)
    try:
        async for _ in changes:
            await on_change()
    finally:
        await changes.aclose()
