"""The reconcile loop every reconciling subsystem runs: on start, on the events it cares about, and on a timer.

One loop, written once: it waits for the first of (stop, an event on the subscription, the interval
elapsing) and calls ``reconcile`` with the event that woke it (None for the timer). The subscription's
queue is bounded and drops the oldest event, so a burst never builds a backlog.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nodeagent import aio
from nodeagent.events import Event, EventBus

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
