"""Long-lived gRPC server streams that follow one changing value (the device plugin's ListAndWatch, the DRA
plugin's NodeWatchResources): ``wake`` wakes every stream at once, none missing a change; ``end`` makes every
stream's loop return (so grpclib ends it with status OK: a cancelled handler would leave the kubelet's stream
open as long as this process lives) and waits, bounded, until they have; until ``reopen`` a stream opened on a
connection the kubelet still holds ends at once (closing a grpclib server leaves its connections open)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class Streams:
    def __init__(self) -> None:
        self.changed = asyncio.Event()
        """Set by the next ``wake``: a stream takes it before sending, then waits on it."""
        self.closing = False
        """From ``end`` to ``reopen``: a stream's loop returns."""
        self.open = 0
        """Streams open now."""
        self._closed = asyncio.Event()

    def wake(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()  # every waiter wakes, none misses a change
        changed.set()

    @contextlib.contextmanager
    def opened(self) -> Iterator[None]:
        """One stream's life (counted in ``open``)."""
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1
            self._closed.set()

    async def end(self, timeout_s: float = 2.0) -> None:
        self.closing = True
        self.wake()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.open:
                    await self._closed.wait()
                    self._closed.clear()

    def reopen(self) -> None:
        self.closing = False
