"""Per-GPU sweeps on one worker thread with a timeout per backend call, shared by the NVML backend and
the simulator so that both behave the same way under faults.

A sweep (one ``inventory()`` or ``sample()``) is one hop to the worker thread. Inside the hop every backend
call goes through ``Hop.call``, which records which GPU and which call is in progress and how long it has
run. The loop side waits on the hop and wakes only when the call in progress has run past the per-call
timeout: then the thread is abandoned (``aio.Worker`` semantics: the next hop gets a fresh thread), the
GPU whose call hung is marked DEGRADED and skipped for a backoff period, the results of the GPUs already
read are kept, and one more hop reads the GPUs after it. The loop is never blocked and a hung GPU never
hides the others.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import structlog

from nodeagent.aio import Worker
from nodeagent.backends.gpu.healthbook import HealthBook
from nodeagent.errors import CallTimeout
from nodeagent.model.gpu import MigKey, Reading, Sample, SampleRequest

T = TypeVar("T")
R = TypeVar("R")

log = structlog.get_logger(__name__)


GpuValues = tuple[dict[Reading, float], dict[MigKey, dict[Reading, float]]]
"""What a sample sweep reads from one GPU: its values and those of its MIG instances."""


def wanted_gpus(count: int, request: SampleRequest) -> list[int]:
    """The GPU indexes a sample sweep reads: all but those whose sampling is paused."""
    return [i for i in range(count) if i not in request.skip_gpus]


class GpuLost(Exception):
    """Raised by a per-GPU read when the backend says the GPU fell off the bus."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class GpuUnreadable(Exception):
    """Raised by a per-GPU read when the GPU answers but cannot be read at all (health DEGRADED)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Broken:
    """A per-GPU read that failed: GpuUnreadable, or something unexpected (a bug)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Abandoned(Exception):
    """The loop gave up on this hop; the thread stops at its next call."""


class Hop:
    """The progress record of one hop, written by the worker thread and read by the loop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.started = False
        self.started_any = False
        self.gpu: int | None = None
        self.call_name = ""
        self.call_started = 0.0
        self.call_seconds = 0.0
        self.failures: dict[str, int] = {}
        self.gpu_failures: dict[int, int] = {}
        self.results: dict[int, Any] = {}
        self.head_done = False
        self.head_result: Any = None
        self.tail_result: Any = None

    def call(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        """Run one backend call, timed and visible to the watchdog."""
        if self.abandoned:
            raise _Abandoned
        self.call_name = name
        self.started_any = True
        start = time.perf_counter()
        self.call_started = start
        try:
            return fn(*args)
        finally:
            self.call_seconds += time.perf_counter() - start
            self.call_started = 0.0

    def check(self) -> None:
        """Stop here if the loop has given up on this hop (after a wait that outlived the timeout)."""
        if self.abandoned:
            raise _Abandoned

    def fail(self, name: str) -> None:
        """Count a failed call (an error other than NotSupported) against the GPU in progress."""
        with self.lock:
            if self.abandoned:
                return
            self.failures[name] = self.failures.get(name, 0) + 1
            if self.gpu is not None:
                self.gpu_failures[self.gpu] = self.gpu_failures.get(self.gpu, 0) + 1


class WatchedWorker(Worker):
    """An ``aio.Worker`` whose timeout applies to each call inside a hop, not to the hop as a whole.
    ``abandoned`` counts threads still stuck in the library (one that returns late is subtracted)."""

    def _returned(self, _: object) -> None:
        with self._lock:
            self.abandoned = max(0, self.abandoned - 1)

    async def call_watched(self, fn: Callable[..., T], *args: Any, hop: Hop, call_timeout_s: float, name: str) -> T:
        if self.abandoned >= self.max_abandoned:
            raise CallTimeout(f"{name} (worker has {self.abandoned} hung threads)", call_timeout_s)
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        executor = self._ensure()
        future = loop.run_in_executor(executor, functools.partial(ctx.run, fn, *args))
        while True:
            started = hop.call_started
            now = time.perf_counter()
            if started and now - started >= call_timeout_s:
                with hop.lock:
                    hop.abandoned = True
                self._abandon(executor)
                # A stranded thread that comes back (the call returned late) no longer counts.
                future.add_done_callback(self._returned)
                raise CallTimeout(hop.call_name or name, call_timeout_s)
            wait_s = started + call_timeout_s - now if started else call_timeout_s
            done, _ = await asyncio.wait({future}, timeout=max(wait_s, 0.001))
            if not done:
                continue
            if future.cancelled() and not hop.started_any:
                # Queued behind another caller's hung call: that thread was abandoned and our work
                # cancelled before it ran. Run it on the fresh thread.
                if self.abandoned >= self.max_abandoned:
                    raise CallTimeout(f"{name} (worker has {self.abandoned} hung threads)", call_timeout_s)
                executor = self._ensure()
                future = loop.run_in_executor(executor, functools.partial(ctx.run, fn, *args))
                continue
            return future.result()


@dataclass
class SweepResult(Generic[R]):
    results: dict[int, R]
    """Per GPU index that was read successfully (lost, hung and skipped GPUs are absent)."""
    head: Any = None
    tail: Any = None
    failures: dict[str, int] = field(default_factory=dict)
    call_seconds: float = 0.0
    duration_s: float = 0.0


class GpuSweeper:
    """Runs sweeps over GPUs on one watched worker thread and keeps their health."""

    def __init__(
        self,
        name: str,
        *,
        call_timeout_s: float,
        backoff_initial_s: float = 30.0,
        backoff_max_s: float = 600.0,
        monotonic: Callable[[], float] = time.monotonic,
        max_abandoned: int = 8,
    ) -> None:
        self.name = name
        self.call_timeout_s = call_timeout_s
        self.worker = WatchedWorker(name, max_abandoned=max_abandoned)
        self.health = HealthBook(backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s, monotonic=monotonic)

    async def call(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        """One backend call on the worker thread with the per-call timeout (raises CallTimeout)."""
        hop = Hop()
        return await self.worker.call_watched(
            hop.call, name, fn, *args, hop=hop, call_timeout_s=self.call_timeout_s, name=name
        )

    async def call_in_hop(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        """Like ``call``, with the Hop passed as ``fn``'s first argument (so it can ``check`` it)."""
        hop = Hop()
        return await self.worker.call_watched(
            hop.call, name, fn, hop, *args, hop=hop, call_timeout_s=self.call_timeout_s, name=name
        )

    async def sweep(
        self,
        indices: Iterable[int],
        per_gpu: Callable[[Hop, int], R],
        *,
        head: Callable[[Hop], Any] | None = None,
        tail: Callable[[Hop], Any] | None = None,
        name: str = "sweep",
    ) -> SweepResult[R]:
        """``head``, then ``per_gpu`` for each GPU not in backoff, then ``tail``, in one hop (more only
        after a hang). ``per_gpu`` raises GpuLost for a lost GPU and reports failed calls with Hop.fail."""
        start = time.perf_counter()
        out: SweepResult[R] = SweepResult(results={})
        todo = [i for i in indices if not self.health.in_backoff(i)]
        done: set[int] = set()
        need_head, need_tail = head is not None, tail is not None
        while True:
            hop = Hop()
            timed_out, timeout_call = False, ""
            try:
                plan = _Plan(
                    todo, per_gpu, head if need_head else None, tail if need_tail else None, self.health.in_backoff
                )
                await self.worker.call_watched(
                    _run_hop,
                    hop,
                    plan,
                    hop=hop,
                    call_timeout_s=self.call_timeout_s,
                    name=f"{self.name}.{name}",
                )
            except CallTimeout as err:
                timed_out = True
                timeout_call = err.call
            with hop.lock:
                hop.abandoned = True  # a late thread must not write into what we are about to read
                if hop.call_started:
                    hop.call_seconds += time.perf_counter() - hop.call_started
                results, failures, gpu_failures = dict(hop.results), dict(hop.failures), dict(hop.gpu_failures)
            out.call_seconds += hop.call_seconds
            for call, n in failures.items():
                out.failures[call] = out.failures.get(call, 0) + n
            for i, r in results.items():
                done.add(i)
                if isinstance(r, GpuLost):
                    self.health.lost(i, r.reason)
                elif isinstance(r, _Broken):
                    self.health.degraded(i, r.reason)
                else:
                    out.results[i] = r
                    self.health.read_ok(i, gpu_failures.get(i, 0))
            if hop.head_done:
                need_head, out.head = False, hop.head_result
            if not timed_out:
                out.tail = hop.tail_result
                break
            out.failures[timeout_call] = out.failures.get(timeout_call, 0) + 1
            if not hop.started:
                # The worker refuses work (too many hung threads): nothing can be read this sweep.
                for i in todo:
                    if i not in done:
                        self.health.degraded(i, f"NVML worker unavailable: {timeout_call}")
                break
            hung = hop.gpu
            if hung is not None:
                self.health.hung(hung, timeout_call, self.call_timeout_s)
                done.add(hung)
            elif need_head and not hop.head_done:
                need_head = False  # the head hung: go on without it
            else:
                break  # the tail hung: every GPU is read already
            todo = [i for i in todo if i not in done]
            if not todo and not need_tail:
                break
        out.duration_s = time.perf_counter() - start
        return out

    def shutdown(self) -> None:
        self.worker.shutdown()


@dataclass(frozen=True)
class _Plan:
    indices: list[int]
    per_gpu: Callable[[Hop, int], Any]
    head: Callable[[Hop], Any] | None
    tail: Callable[[Hop], Any] | None
    skip: Callable[[int], bool]


def _run_hop(hop: Hop, plan: _Plan) -> None:
    hop.started = True
    try:
        if plan.head is not None:
            result = plan.head(hop)
            with hop.lock:
                if hop.abandoned:
                    return
                hop.head_result, hop.head_done = result, True
        for i in plan.indices:
            if plan.skip(i):  # went into backoff while this hop waited behind a hung one
                continue
            hop.gpu = i
            try:
                r: Any = plan.per_gpu(hop, i)
            except GpuLost as lost:
                r = lost
            except GpuUnreadable as err:
                r = _Broken(err.reason)
            except _Abandoned:
                raise
            except Exception as err:
                log.exception("gpu_read_failed", gpu=i)
                r = _Broken(f"read failed: {type(err).__name__}: {err}")
            with hop.lock:
                if hop.abandoned:
                    return
                hop.results[i] = r
        hop.gpu = None
        if plan.tail is not None:
            result = plan.tail(hop)
            with hop.lock:
                if not hop.abandoned:
                    hop.tail_result = result
    except _Abandoned:
        return


def to_sample(
    result: SweepResult[GpuValues], *, taken_at: float, health: HealthBook, gpus: Iterable[int], request: SampleRequest
) -> Sample:
    """The Sample of one sample sweep (shared by NVML and the simulator, so both report alike)."""
    values: dict[int, dict[Reading, float]] = {}
    mig: dict[MigKey, dict[Reading, float]] = {}
    for index, (gpu_values, mig_values) in result.results.items():
        values[index] = gpu_values
        mig.update(mig_values)
    return Sample(
        taken_at=taken_at,
        gpus=values,
        mig=mig,
        xids=tuple(result.tail or ()),
        failures=result.failures,
        health={i: health.state(i) for i in gpus if i not in request.skip_gpus},
        duration_s=result.duration_s,
        call_seconds=result.call_seconds,
    )
