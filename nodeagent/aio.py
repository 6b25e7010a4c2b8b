"""Asyncio helpers: the only module that touches threads.

- ``run_blocking``: run a blocking function off the loop (contextvars copied), with a timeout.
- ``Worker``: one dedicated thread for a library that must stay on one thread (NVML). A call that
  hangs past its timeout abandons that thread (it stays blocked in the library) and the next call gets
  a fresh thread, so one hung GPU never stalls the agent. Abandoned threads are counted and capped.
- ``guarded_task``: a named task whose failure or unexpected end is logged, never silently lost.
- ``periodic``: run a coroutine every N seconds until a stop event is set.
- ``until_stopped`` / ``first_of`` / ``run_until_stopped``: the only places that race work against a
  stop event, so no subsystem hand-writes that race.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, ParamSpec, TypeVar

import structlog

from nodeagent.errors import CallTimeout

P = ParamSpec("P")
T = TypeVar("T")

log = structlog.get_logger(__name__)


async def run_blocking(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn`` in the default thread pool, with the caller's contextvars."""
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    call = functools.partial(ctx.run, fn, *args, **kwargs)
    return await loop.run_in_executor(None, call)


class Worker:
    """A single dedicated thread for one library; calls are serialised and each has a timeout."""

    def __init__(self, name: str, *, max_abandoned: int = 8) -> None:
        self.name = name
        self.max_abandoned = max_abandoned
        self.abandoned = 0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"{self.name}-{self.abandoned}"
                )
            return self._executor

    async def call(self, fn: Callable[..., T], *args: Any, timeout_s: float, name: str = "") -> T:
        """Run ``fn(*args)`` on the worker thread; raise CallTimeout if it does not return in time."""
        if self.abandoned >= self.max_abandoned:
            raise CallTimeout(name or getattr(fn, "__name__", "call"), timeout_s)
        executor = self._ensure()
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        future = loop.run_in_executor(executor, functools.partial(ctx.run, fn, *args))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            self._abandon(executor)
            raise CallTimeout(name or getattr(fn, "__name__", "call"), timeout_s) from None

    def _abandon(self, executor: concurrent.futures.ThreadPoolExecutor) -> None:
        with self._lock:
            if self._executor is executor:
                self._executor = None
                self.abandoned += 1
        executor.shutdown(wait=False, cancel_futures=True)
        log.warning("worker_thread_abandoned", worker=self.name, abandoned=self.abandoned)

    def shutdown(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def guarded_task(
    coro: Coroutine[Any, Any, Any],
    *,
    name: str,
    forever: bool = False,
    stopping: asyncio.Event | None = None,
    on_failure: Callable[[BaseException], None] | None = None,
) -> asyncio.Task[Any]:
    """Create a named task; log its failure, or its end when ``forever`` and ``stopping`` is not set."""
    task = asyncio.create_task(coro, name=name)

    def _done(t: asyncio.Task[Any]) -> None:
        if t.cancelled():
            return
        exc = t.exception()
        if exc is not None:
            log.error("task_failed", task=name, error=repr(exc))
            if on_failure is not None:
                on_failure(exc)
        elif forever and not (stopping is not None and stopping.is_set()):
            log.warning("task_finished_unexpectedly", task=name)

    task.add_done_callback(_done)
    return task


async def periodic(
    fn: Callable[[], Awaitable[object]],
    *,
    interval_s: float,
    stop: asyncio.Event,
    run_first: bool = True,
) -> None:
    """Call ``fn`` every ``interval_s`` seconds (start to start) until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    next_at = loop.time() if run_first else loop.time() + interval_s
    while not stop.is_set():
        delay = next_at - loop.time()
        if delay > 0 and await wait_or_stop(stop, delay):
            return
        await fn()
        next_at += interval_s
        if next_at < loop.time():  # fell behind (a slow call): skip missed ticks, do not burst
            next_at = loop.time() + interval_s


async def until_stopped(stop: asyncio.Event, awaitable: Awaitable[T]) -> T | None:
    """Await ``awaitable`` unless ``stop`` is set first; then cancel it and return None."""
    if stop.is_set():
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        return None
    work = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    if work.cancelled():
        return None
    return work.result()


async def first_of(*flags: asyncio.Event, timeout_s: float | None = None) -> asyncio.Event | None:
    """Wait until one of ``flags`` is set and return it (the first in argument order); None on timeout."""
    for flag in flags:
        if flag.is_set():
            return flag
    waiters = [asyncio.ensure_future(flag.wait()) for flag in flags]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
    return next((flag for flag in flags if flag.is_set()), None)


async def run_until_stopped(stop: asyncio.Event, coros: Mapping[str, Coroutine[Any, Any, None]]) -> None:
    """Run named coroutines as tasks until ``stop``; the first one that fails is re-raised, the rest cancelled."""
    tasks = [guarded_task(coro, name=name) for name, coro in coros.items()]
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and not task.cancelled() and (exc := task.exception()) is not None:
                raise exc
    finally:
        await cancel_and_wait([*tasks, stopper], timeout_s=2.0)


async def wait_or_stop(stop: asyncio.Event, timeout_s: float) -> bool:
    """Sleep up to ``timeout_s``; return True as soon as ``stop`` is set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout_s)
    except TimeoutError:
        return False
    return True


async def cancel_and_join(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel a subsystem's helper tasks and wait until each has ended (their cancellation is expected)."""
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t


async def cancel_and_wait(tasks: list[asyncio.Task[Any]], *, timeout_s: float) -> None:
    """Cancel tasks and wait for them at most ``timeout_s``."""
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s)


def hard_exit_timer(seconds: float, *, code: int = 1) -> threading.Timer:
    """Exit the process after ``seconds`` even if the loop is stuck (kopf's ultimate termination)."""

    def _exit() -> None:
        log.error("hard_exit", after_s=seconds)
        os._exit(code)

    timer = threading.Timer(seconds, _exit)
    timer.daemon = True
    timer.start()
    return timer
