"""The one owner of GPU state (Home Assistant's DataUpdateCoordinator is the model: one fetch, many readers).

Every subsystem reaches the GPUs through this object, never through the backend directly:

- the inventory: fetched once and cached; refreshed every ``interval_s`` and when someone asks
  (``request_refresh``, e.g. after a MIG change); a change is published as ``events.INVENTORY_CHANGED``;
- sampling: ``sample()`` passes one sweep to the backend, leaving out GPUs whose sampling is paused, and
  publishes what it learns: every new XID as ``events.XID``, every change of health as ``events.GPU_HEALTH``;
- pause/resume of a GPU's sampling, so a MIG change never races the agent's own NVML calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from types import MappingProxyType

import structlog

from nodeagent import aio, events
from nodeagent.backends.gpu.protocols import GpuBackend
from nodeagent.errors import NodeAgentError
from nodeagent.events import EventBus
from nodeagent.model.gpu import GpuHealthState, Inventory, Sample, SampleRequest

log = structlog.get_logger("nodeagent.gpustate")

DEFAULT_REFRESH_S = 30.0


class GpuState:
    def __init__(self, backend: GpuBackend, bus: EventBus, *, interval_s: float = DEFAULT_REFRESH_S) -> None:
        self.backend = backend
        self.bus = bus
        self.interval_s = interval_s
        self._inventory: Inventory | None = None
        self._health: Mapping[int, GpuHealthState] = MappingProxyType({})
        self._paused: dict[int, int] = {}
        self._refresh_wanted = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def kind(self) -> str:
        return self.backend.kind

    # ------------------------------------------------------------------------------------- inventory

    @property
    def inventory(self) -> Inventory | None:
        """The latest inventory, or None before the first fetch."""
        return self._inventory

    def seed(self, inventory: Inventory) -> None:
        """Take an inventory fetched while composing the agent (no event: nobody listens yet)."""
        self._inventory = inventory

    async def current(self) -> Inventory:
        """The cached inventory, fetched once if there is none. Raises NodeAgentError when it cannot be."""
        if self._inventory is not None:
            return self._inventory
        refreshed = await self.refresh(raise_errors=True)
        assert refreshed is not None
        return refreshed

    async def refresh(self, *, raise_errors: bool = False) -> Inventory | None:
        """Fetch the inventory now; publish INVENTORY_CHANGED when it differs. None when the fetch failed."""
        async with self._lock:
            try:
                inventory = await self.backend.inventory()
            except NodeAgentError as err:
                if raise_errors:
                    raise
                log.warning("inventory_failed", error=str(err))
                return None
            if inventory != self._inventory:
                had = self._inventory is not None
                self._inventory = inventory
                self.bus.publish(events.INVENTORY_CHANGED, inventory)
                if had:
                    log.info("inventory_changed", gpus=len(inventory.gpus))
            return inventory

    def request_refresh(self) -> None:
        """Ask the refresh loop for a fetch as soon as it can (coalesced)."""
        self._refresh_wanted.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh every ``interval_s`` and on request, until ``stop``."""
        while True:
            woke = await aio.first_of(stop, self._refresh_wanted, timeout_s=self.interval_s)
            if woke is stop:
                return
            self._refresh_wanted.clear()
            await self.refresh()

    # -------------------------------------------------------------------------------------- sampling

    @property
    def paused(self) -> frozenset[int]:
        return frozenset(self._paused)

    def pause(self, indexes: Iterable[int]) -> None:
        """Stop sampling these GPUs until as many ``resume`` calls (pauses nest)."""
        for i in indexes:
            self._paused[i] = self._paused.get(i, 0) + 1
            log.info("gpu_sampling_paused", gpu=i)

    def resume(self, indexes: Iterable[int]) -> None:
        for i in indexes:
            left = self._paused.get(i, 0) - 1
            if left > 0:
                self._paused[i] = left
            elif i in self._paused:
                del self._paused[i]
                log.info("gpu_sampling_resumed", gpu=i)

    @contextlib.asynccontextmanager
    async def paused_for(self, indexes: Iterable[int]) -> AsyncIterator[None]:
        """Pause sampling of ``indexes`` for the block; the inventory is refreshed once afterwards."""
        chosen = tuple(indexes)
        self.pause(chosen)
        try:
            yield
        finally:
            self.resume(chosen)
            await self.refresh()

    async def sample(self, request: SampleRequest) -> Sample:
        """One sweep of every GPU not paused; publishes new XIDs and health changes."""
        if self._paused:
            request = SampleRequest(
                readings=request.readings,
                include_mig=request.include_mig,
                skip_gpus=request.skip_gpus | self.paused,
            )
        sample = await self.backend.sample(request)
        for xid in sample.xids:
            self.bus.publish(events.XID, xid)
        health = {**self._health, **sample.health}
        if health != self._health:
            self._health = MappingProxyType(health)
            self.bus.publish(events.GPU_HEALTH, self._health)
        return sample

    @property
    def health(self) -> Mapping[int, GpuHealthState]:
        return self._health
