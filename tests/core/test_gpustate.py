"""The GPU-state owner: one fetch of the inventory feeds every subscriber; sampling publishes what it learns."""

from __future__ import annotations

import asyncio

from nodeagent import events, testing
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.sim import sandbox
from nodeagent.events import EventBus
from nodeagent.gpustate import Delivery, GpuState, SamplingNeeds
from nodeagent.model.gpu import GpuHealthState, Reading, Sample, SampleRequest

REQUEST = SampleRequest(frozenset({Reading.GPU_TEMP_C}))


async def test_refresh_publishes_only_when_the_inventory_changes() -> None:
    backend = testing.FixedInventory(sandbox.sandbox_inventory(2))
    bus = EventBus()
    state = GpuState(backend, bus)
    async with bus.subscribe(events.INVENTORY_CHANGED) as sub:
        first = await state.refresh()
        assert (await sub.get()).payload == first
        await state.refresh()
        assert sub.pending() == 0, "the same inventory again is not news"
        backend.serve(sandbox.sandbox_inventory(2, mig_on=(1,)))
        changed = await state.refresh()
        assert changed is not None and changed.gpu(1).mig_enabled
        assert (await sub.get()).payload == changed
    assert state.inventory == changed


async def test_current_fetches_once_and_then_serves_the_cache() -> None:
    calls = 0
    backend = testing.FixedInventory(sandbox.sandbox_inventory(1))
    fetch = backend.inventory

    async def counted() -> object:
        nonlocal calls
        calls += 1
        return await fetch()

    backend.inventory = counted  # type: ignore[method-assign]
    state = GpuState(backend, EventBus())
    assert (await state.current()) is (await state.current())
    assert calls == 1


async def test_a_request_wakes_the_refresh_loop_before_its_interval() -> None:
    backend = testing.FixedInventory(sandbox.sandbox_inventory(1))
    bus = EventBus()
    state = GpuState(backend, bus, interval_s=3600)
    state.seed(await backend.inventory())
    stop = asyncio.Event()
    async with bus.subscribe(events.INVENTORY_CHANGED) as sub:
        task = asyncio.create_task(state.run(stop))
        backend.serve(sandbox.sandbox_inventory(2))
        state.request_refresh()
        event = await asyncio.wait_for(sub.get(), 5)
        assert len(event.payload.gpus) == 2
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_paused_gpus_are_left_out_of_sampling_until_resumed() -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 3, 0)
    await sim.open()
    state = GpuState(sim, EventBus())
    try:
        state.pause([1])
        state.pause([1])  # pauses nest: MIG and a second caller
        assert set((await state.sample(REQUEST)).gpus) == {0, 2}
        state.resume([1])
        assert state.paused == frozenset({1})
        state.resume([1])
        assert set((await state.sample(REQUEST)).gpus) == {0, 1, 2}
        async with state.paused_for([0, 2]):
            assert set((await state.sample(REQUEST)).gpus) == {1}
        assert state.paused == frozenset() and state.inventory is not None  # refreshed once afterwards
    finally:
        await sim.close()


async def test_sampling_publishes_xids_and_health_changes_once() -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    await sim.open()
    bus = EventBus()
    state = GpuState(sim, bus)
    try:
        async with bus.subscribe(events.XID, events.GPU_HEALTH) as sub:
            await state.sample(REQUEST)
            health = await sub.get()
            assert health.topic == events.GPU_HEALTH and set(health.payload.values()) == {GpuHealthState.OK}
            sim.inject_xid(1, 94)
            await state.sample(REQUEST)
            xid = await sub.get()
            assert xid.topic == events.XID and (xid.payload.gpu_index, xid.payload.xid) == (1, 94)
            assert sub.pending() == 0, "health did not change: no health event"
            sim.lose_gpu(0)
            await state.sample(REQUEST)
            topics = [(await sub.get()) for _ in range(2)]
            lost = next(e for e in topics if e.topic == events.GPU_HEALTH)
            assert lost.payload[0] is GpuHealthState.LOST and lost.payload[1] is GpuHealthState.OK
    finally:
        await sim.close()


async def test_an_injected_xid_is_pushed_without_a_sweep() -> None:
    """The simulator's injection reaches the bus at once: the next sweep due is an hour away."""
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    await sim.open()
    bus = EventBus()
    state = GpuState(sim, bus, interval_s=3600)
    stop = asyncio.Event()
    deliveries: list[Delivery] = []
    swept = asyncio.Event()

    def listener(delivery: Delivery) -> None:
        deliveries.append(delivery)
        swept.set()

    with state.register("health", SamplingNeeds(interval_s=3600.0), listener):
        async with bus.subscribe(events.XID) as sub:
            task = asyncio.create_task(state.run(stop))
            await swept.wait()  # the first sweep: due at registration
            sim.inject_xid(1, 79)
            event = await asyncio.wait_for(sub.get(), 5)
            assert (event.payload.gpu_index, event.payload.xid) == (1, 79)
            assert len(deliveries) == 1, "no sweep delivered it"
            await state.sweep(force=state.registrations[0])
            assert [x.xid for x in deliveries[1].sample.xids] == [79], "and the listener's next delivery has it"
            stop.set()
            await asyncio.wait_for(task, 5)
    assert state.registrations == ()
    await sim.close()


class Recording(testing.FixedInventory):
    """Serves one inventory and records every sample request (each one is one backend hop)."""

    def __init__(self) -> None:
        super().__init__(sandbox.sandbox_inventory(2))
        self.requests: list[SampleRequest] = []

    async def sample(self, request: SampleRequest) -> Sample:
        self.requests.append(request)
        return Sample(taken_at=0.0, gpus={i: {} for i in range(2) if i not in request.skip_gpus})


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


TEMP, POWER, ENERGY = Reading.GPU_TEMP_C, Reading.POWER_W, Reading.TOTAL_ENERGY_MJ


async def test_one_sweep_serves_every_listener_due_with_their_readings_merged() -> None:
    backend, clock = Recording(), Clock()
    state = GpuState(backend, EventBus(), monotonic=clock)
    got: dict[str, list[Delivery]] = {"metrics": [], "health": []}
    metrics = state.register(
        "metrics",
        SamplingNeeds(interval_s=10.0, readings=frozenset({TEMP}), slow=frozenset({ENERGY}), slow_interval_s=30.0),
        got["metrics"].append,
    )
    state.register("health", SamplingNeeds(interval_s=10.0), got["health"].append)
    await state.sweep()
    assert backend.requests == [SampleRequest(frozenset({TEMP, ENERGY}), include_mig=False)], "one hop for both"
    assert [d.slow for d in got["metrics"]] == [True] and len(got["health"]) == 1
    clock.t += 9.0  # within half an interval of both: served together, no second hop
    await state.sweep()
    assert backend.requests[1].readings == {TEMP}, "the slow tier is not due yet"
    assert len(got["metrics"]) == len(got["health"]) == 2
    await state.sweep()
    assert len(backend.requests) == 2, "nobody is due"
    metrics.close()
    clock.t += 30.0
    await state.sweep()
    assert backend.requests[2].readings == frozenset(), "the metrics needs left with their registration"
    assert len(got["metrics"]) == 2 and len(got["health"]) == 3


async def test_the_smallest_interval_sets_the_pace_and_slow_listeners_are_served_on_their_own() -> None:
    backend, clock = Recording(), Clock()
    state = GpuState(backend, EventBus(), monotonic=clock)
    fast: list[Delivery] = []
    slow: list[Delivery] = []
    state.register("fast", SamplingNeeds(interval_s=1.0, readings=frozenset({TEMP})), fast.append)
    state.register("slow", SamplingNeeds(interval_s=10.0, readings=frozenset({POWER}), mig=True), slow.append)
    for _ in range(10):
        await state.sweep()
        clock.t += 1.0
    assert len(fast) == 10 and len(slow) == 1
    assert backend.requests[0] == SampleRequest(frozenset({TEMP, POWER}), include_mig=True)
    assert all(r.readings == {TEMP} and not r.include_mig for r in backend.requests[1:])
    await state.sweep()
    assert len(slow) == 2 and backend.requests[-1].readings == {TEMP, POWER}


async def test_paused_gpus_are_left_out_of_scheduled_sweeps() -> None:
    backend, clock = Recording(), Clock()
    state = GpuState(backend, EventBus(), monotonic=clock)
    got: list[Delivery] = []
    state.register("metrics", SamplingNeeds(interval_s=10.0, readings=frozenset({TEMP})), got.append)
    state.pause([1])
    await state.sweep()
    assert backend.requests[0].skip_gpus == {1} and set(got[0].sample.gpus) == {0}


async def test_the_loop_sweeps_for_a_new_registration_at_once() -> None:
    """A registration wakes the loop (nothing else would for an hour); closing it stops the sweeps."""
    backend = Recording()
    state = GpuState(backend, EventBus(), interval_s=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(state.run(stop))
    await state.started.wait()
    delivered = asyncio.Event()
    reg = state.register("health", SamplingNeeds(interval_s=3600.0), lambda _: delivered.set())
    await asyncio.wait_for(delivered.wait(), 5)
    reg.close()
    assert state.registrations == ()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert len(backend.requests) == 1


async def test_a_failed_sweep_waits_for_the_next_interval() -> None:
    from nodeagent.errors import BackendUnavailable

    backend, clock = Recording(), Clock()
    state = GpuState(backend, EventBus(), monotonic=clock)
    got: list[Delivery] = []
    state.register("metrics", SamplingNeeds(interval_s=10.0, readings=frozenset({TEMP})), got.append)
    real = backend.sample

    async def failing(request: SampleRequest) -> Sample:
        await real(request)
        raise BackendUnavailable("gone")

    backend.sample = failing  # type: ignore[method-assign]
    await state.sweep()
    await state.sweep()
    assert len(backend.requests) == 1 and got == [], "not retried before its interval"
    backend.sample = real  # type: ignore[method-assign]
    clock.t += 10.0
    await state.sweep()
    assert len(got) == 1
