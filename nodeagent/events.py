"""A small in-process event bus: subsystems react to each other without polling files.

Topics are plain strings (the constants below). ``publish`` is synchronous and never blocks: each
subscriber has a bounded queue, and when a slow subscriber's queue is full its oldest event is dropped
(the latest state matters, not the history). The last payload of each topic is retained, so a
subsystem that starts late still sees that the driver became ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

DRIVER_READY = "driver.ready"
"""Payload: the driver facts (or ``None`` when the driver stops being ready)."""
INVENTORY_CHANGED = "inventory.changed"
"""Payload: the new ``model.gpu.Inventory``."""
RUNTIME_HEALTHY = "runtime.healthy"
"""Payload: ``True`` / ``False``."""
RUNTIME_HANDLERS = "runtime.handlers"
"""Payload: the runtime handler names the runtime was configured with (tuple of str), for RuntimeClasses."""
MIG_CHANGED = "mig.changed"
"""Payload: the new ``Inventory`` after a MIG layout change."""
MIG_READY = "mig.ready"
"""Payload: ``model.mig.MigReadiness`` (desired config, state pending|rebooting|success|failed, reason)
after every MIG reconcile; the validation file ``mig-ready`` follows it."""
MIG_CONFIG_REQUESTED = "mig.config.requested"
"""Payload: ``model.mig.MigConfigRequest``: the Node's ``nvidia.com/mig.config`` label changed (labels
publishes it from its watch of the own Node; mig applies the named config)."""
NODE_GPU_HEALTH = "gpu.health.node"
"""Payload: ``model.health.NodeGpuHealth``: the classified health of every GPU (gpuhealth publishes it on
change, rate-limited; gpuhealth writes it as the ``NvidiaGpuHealthy`` condition and the optional taint)."""
XID = "gpu.xid"
"""Payload: a ``model.gpu.XidEvent``."""
GPU_HEALTH = "gpu.health"
"""Payload: ``{gpu index: GpuHealthState}`` whenever any GPU's health changes."""
SETTINGS_RELOADED = "settings.reloaded"
"""Payload: the ``Settings`` in effect after a reload (the subsystems that read a changed section have been
restarted by then; see ``Agent.apply_settings``)."""


@dataclass(frozen=True)
class Event:
    topic: str
    payload: Any


class Subscription:
    """An async iterator of events for some topics; close it (or use ``async with``) when done."""

    def __init__(self, bus: EventBus, topics: frozenset[str], maxsize: int) -> None:
        self._bus = bus
        self.topics = topics
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=maxsize)

    def _offer(self, event: Event) -> None:
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(event)

    async def get(self) -> Event:
        return await self._queue.get()

    def pending(self) -> int:
        """Events queued and not yet taken."""
        return self._queue.qsize()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        return await self._queue.get()

    def close(self) -> None:
        self._bus._subscriptions.discard(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Publish/subscribe inside one event loop, with the last value of each topic retained."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()
        self._last: dict[str, Any] = {}
        self._changed: dict[str, asyncio.Event] = {}

    def publish(self, topic: str, payload: Any = None) -> None:
        self._last[topic] = payload
        event = Event(topic, payload)
        for sub in list(self._subscriptions):
            if topic in sub.topics:
                sub._offer(event)
        waiter = self._changed.pop(topic, None)
        if waiter is not None:
            waiter.set()

    def subscribe(self, *topics: str, maxsize: int = 16) -> Subscription:
        sub = Subscription(self, frozenset(topics), maxsize)
        self._subscriptions.add(sub)
        return sub

    def last(self, topic: str, default: Any = None) -> Any:
        return self._last.get(topic, default)

    async def wait_for(self, topic: str, predicate: Callable[[Any], bool] = bool) -> Any:
        """Wait until the retained payload of ``topic`` satisfies ``predicate`` and return it."""
        while True:
            if topic in self._last and predicate(self._last[topic]):
                return self._last[topic]
            waiter = self._changed.setdefault(topic, asyncio.Event())
            await waiter.wait()
