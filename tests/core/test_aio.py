"""The worker thread: a hung call times out, the loop stays responsive, the next call gets a new thread."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from nodeagent import aio
from nodeagent.errors import CallTimeout


async def test_worker_runs_calls_on_one_dedicated_thread() -> None:
    worker = aio.Worker("nvml")
    names = {await worker.call(lambda: threading.current_thread().name, timeout_s=1) for _ in range(5)}
    assert len(names) == 1 and threading.current_thread().name not in names
    worker.shutdown()


async def test_hung_call_times_out_without_blocking_the_loop() -> None:
    worker = aio.Worker("nvml")
    release = threading.Event()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    started = time.monotonic()
    with pytest.raises(CallTimeout, match=r"hang did not return within 0\.2s"):
        await worker.call(release.wait, timeout_s=0.2, name="hang")
    assert time.monotonic() - started < 1.0
    assert ticks >= 5, "the loop kept running while the call hung"
    # The hung thread is abandoned; the next call runs on a fresh thread and succeeds.
    assert await worker.call(lambda: 42, timeout_s=1) == 42
    assert worker.abandoned == 1
    release.set()
    t.cancel()
    await asyncio.gather(t, return_exceptions=True)
    worker.shutdown()


async def test_worker_gives_up_after_too_many_hung_threads() -> None:
    worker = aio.Worker("nvml", max_abandoned=1)
    release = threading.Event()
    with pytest.raises(CallTimeout):
        await worker.call(release.wait, timeout_s=0.05)
    with pytest.raises(CallTimeout):
        await worker.call(lambda: 1, timeout_s=1)
    release.set()
    worker.shutdown()


async def test_periodic_runs_until_stopped_and_skips_missed_ticks() -> None:
    stop = asyncio.Event()
    calls: list[float] = []

    async def tick() -> None:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 3:
            stop.set()

    await asyncio.wait_for(aio.periodic(tick, interval_s=0.01, stop=stop), 2)
    assert len(calls) == 3


async def test_wait_or_stop() -> None:
    stop = asyncio.Event()
    assert await aio.wait_or_stop(stop, 0.01) is False
    stop.set()
    assert await aio.wait_or_stop(stop, 10) is True


async def test_guarded_task_reports_failures() -> None:
    seen: list[BaseException] = []

    async def boom() -> None:
        raise ValueError("boom")

    task = aio.guarded_task(boom(), name="boom", on_failure=seen.append)
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert task.get_name() == "boom" and isinstance(seen[0], ValueError)
