"""The one owner of GPU state (Home Assistant's DataUpdateCoordinator is the model: one fetch, many readers).

Every subsystem reaches the GPUs through this object, never through the backend directly:

- the inventory: fetched once and cached; refreshed every ``interval_s`` and when someone asks
  (``request_refresh``, e.g. after a MIG change); a change is published as ``events.INVENTORY_CHANGED``;
- sampling: subsystems ``register`` what they need (``SamplingNeeds``: readings, tiers, interval) and,
  optionally, a listener; the loop in ``run`` makes one sweep for every listener due (``needs.plan_sweep``)
  and hands each its ``Delivery``. Unregistering (``Registration.close``) removes the needs. A sweep leaves
  out GPUs whose sampling is paused and publishes what it learns: every change of health as
  ``events.GPU_HEALTH``, every XID as ``events.XID``;
- XIDs are pushed as they happen when the backend can (``EventSource``: NVML's event wait, the simulator's
  injection), so they reach the bus without waiting for a sweep, whatever subsystems sample;
- pause/resume of a GPU's sampling, so a MIG change never races the agent's own NVML calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType

import structlog

from nodeagent import aio, events
from nodeagent.backends.gpu.protocols import EventSource, GpuBackend
from nodeagent.errors import NodeAgentError
from nodeagent.events import EventBus
from nodeagent.gpustate.needs import Delivery, Listener, Registration, SamplingNeeds, next_due, plan_sweep
from nodeagent.model.gpu import GPM_READINGS, GpuHealthState, Inventory, Sample, SampleRequest, XidEvent

log = structlog.get_logger("nodeagent.gpustate")

DEFAULT_REFRESH_S = 30.0


class GpuState:
    def __init__(
        self,
        backend: GpuBackend,
        bus: EventBus,
        *,
        interval_s: float = DEFAULT_REFRESH_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.bus = bus
        self.interval_s = interval_s
        self.monotonic = monotonic
        self._inventory: Inventory | None = None
        self._health: Mapping[int, GpuHealthState] = MappingProxyType({})
        self._paused: dict[int, int] = {}
        self._refresh_wanted = asyncio.Event()
        self._needs_changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._sweep_lock = asyncio.Lock()
        self._registrations: dict[int, Registration] = {}
        self.started = asyncio.Event()
        """Set while ``run`` is running (events are watched, sweeps scheduled)."""

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
        """Until ``stop``: watch the backend's events, sweep for the registered listeners when they are
        due, and refresh the inventory every ``interval_s`` and on request."""
        unwatch = self.backend.watch_events(self._pushed) if isinstance(self.backend, EventSource) else None
        self.started.set()
        next_refresh = self.monotonic() + self.interval_s
        try:
            while True:
                wait = min(next_refresh, next_due(self._registrations.values())) - self.monotonic()
                if wait > 0:
                    woke = await aio.first_of(stop, self._refresh_wanted, self._needs_changed, timeout_s=wait)
                else:
                    woke = stop if stop.is_set() else None
                if woke is stop:
                    return
                self._needs_changed.clear()
                if woke is self._refresh_wanted or self.monotonic() >= next_refresh:
                    self._refresh_wanted.clear()
                    await self.refresh()
                    next_refresh = self.monotonic() + self.interval_s
                if next_due(self._registrations.values()) <= self.monotonic():
                    await self.sweep()
        finally:
            self.started.clear()
            if unwatch is not None:
                unwatch()

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

    def register(self, name: str, needs: SamplingNeeds, listener: Listener | None = None) -> Registration:
        """Add a subsystem's needs to the sweeps (its first sweep is due at once). ``listener`` is called on
        the loop with each sweep served to it; it must not block. Close the registration to remove them."""
        if needs.interval_s <= 0:
            raise ValueError(f"{name}: sampling interval must be > 0, got {needs.interval_s}")
        reg = Registration(name, needs, listener, next_due=self.monotonic())
        key = id(reg)
        self._registrations[key] = reg

        def unregister() -> None:
            if self._registrations.pop(key, None) is not None:
                log.debug("gpu_sampling_unregistered", listener=name)
                self._needs_changed.set()

        reg.unregister = unregister
        self._needs_changed.set()
        log.debug("gpu_sampling_registered", listener=name, interval_s=needs.interval_s, readings=len(needs.readings))
        return reg

    @property
    def registrations(self) -> tuple[Registration, ...]:
        return tuple(self._registrations.values())

    async def sweep(self, *, force: Registration | None = None) -> None:
        """One sweep for every listener due now (and ``force``, due or not): one backend hop for all."""
        async with self._sweep_lock:
            now = self.monotonic()
            plan = plan_sweep(self._registrations.values(), now, force=force)
            if not plan.served:
                return
            for reg, slow in plan.served:  # before the hop: a failed sweep is not retried in a tight loop
                reg.next_due = now + reg.needs.interval_s
                if slow:
                    reg.slow_due = now + reg.needs.slow_interval_s
            unprimed = [r for r, slow in plan.served if slow and r.needs.prime_gpm_s > 0 and not r.primed]
            if unprimed:
                await self._prime_gpm(unprimed, plan.request)
            started = time.perf_counter()
            try:
                sample = await self.sample(plan.request)
            except NodeAgentError as err:  # the backends report trouble in the sample; this is a bug's way out
                log.warning("gpu_sweep_failed", error=str(err))
                return
            duration = time.perf_counter() - started
            served = {id(r) for r, _ in plan.served}
            for reg in self._registrations.values():  # swept XIDs reach the listeners this sweep does not serve
                if sample.xids and reg.listener is not None and id(reg) not in served:
                    reg.xids.extend(sample.xids)
            for reg, slow in plan.served:
                if reg.listener is None or id(reg) not in self._registrations:
                    continue
                seen = sample
                if reg.xids:
                    seen = replace(sample, xids=(*reg.xids, *sample.xids))
                    reg.xids = []
                try:
                    reg.listener(Delivery(seen, slow=slow, duration_s=duration))
                except Exception:  # one listener's bug must not starve the others
                    log.exception("gpu_sampling_listener_failed", listener=reg.name)

    async def _prime_gpm(self, regs: list[Registration], request: SampleRequest) -> None:
        """A GPM sample ahead of the first slow sweep, so that sweep has rates (its values are dropped)."""
        for r in regs:
            r.primed = True
        gpm = SampleRequest(readings=request.readings & GPM_READINGS, include_mig=request.include_mig)
        if gpm.readings:
            await self.sample(gpm)
            await asyncio.sleep(max(r.needs.prime_gpm_s for r in regs))

    def _pushed(self, event: XidEvent) -> None:
        """An XID the backend pushed (on the loop): on the bus now, and in each listener's next delivery."""
        for reg in self._registrations.values():
            if reg.listener is not None:
                reg.xids.append(event)
        self.bus.publish(events.XID, event)

    async def sample(self, request: SampleRequest) -> Sample:
        """One sweep of every GPU not paused, outside the schedule; publishes new XIDs and health changes."""
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
