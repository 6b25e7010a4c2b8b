"""Sampling tiers and the immutable snapshot.

The metrics subsystem declares its tiers to the GPU-state owner (``Collector.needs``): cheap fields are
read on every sweep; expensive ones (energy, PCIe, ECC batches, GPM) only when the slow tier is due. The
owner's sweeps arrive as deliveries; ``merge`` carries the last slow values into the sweeps in between.
Each sweep yields a new frozen ``Snapshot`` that nothing mutates afterwards, so the renderer and the HTTP
handler can hold it without locks or copies. ``Collector.sweep`` reads a backend directly, outside the
owner's schedule (tests and tools).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from nodeagent.backends.gpu.protocols import Sampler
from nodeagent.gpustate import SamplingNeeds
from nodeagent.metrics.fields import CLOCK_EVENT_NAMES, Counter, Source
from nodeagent.metrics.tiers import Tier, tier_of
from nodeagent.model.gpu import (
    GPM_READINGS,
    GpuHealthState,
    Inventory,
    MigKey,
    Reading,
    Sample,
    SampleRequest,
    XidEvent,
)

GPM_PRIME_INTERVAL_S = 0.5
"""GPM metrics are rates between two samples: the first sweep takes one sample this long before its
own, so profiling fields are in the first snapshot rather than one slow interval later."""

Values = Mapping[Reading, float]
_EMPTY: Values = MappingProxyType({})


@dataclass(frozen=True)
class Snapshot:
    """Everything one sweep knows; never mutated after it is built."""

    taken_at: float
    """time.time() when the sweep's sample started."""
    inventory: Inventory
    gpus: Mapping[int, Values]
    mig: Mapping[MigKey, Values]
    last_xid: Mapping[int, int]
    """GPU index → most recent XID (0 when none seen since the agent started)."""
    health: Mapping[int, GpuHealthState]
    duration_s: float
    """Wall time of the sweep (backend hop included)."""
    slow: bool
    """Whether this sweep read the slow tier."""
    xids: tuple[XidEvent, ...] = ()
    """XIDs first seen in this sweep."""
    xid_window: Mapping[int, Mapping[int, int]] = field(default_factory=dict)
    """GPU index → XID → how many were seen in the last ``xid_window_ms`` (DCGM_EXP_XID_ERRORS_COUNT)."""
    clock_event_window: Mapping[int, Mapping[str, int]] = field(default_factory=dict)
    """GPU index → clock event name → sweeps in the last ``clock_events_window_ms`` that had it set."""
    xid_window_ms: int = 300_000
    clock_events_window_ms: int = 300_000


@dataclass
class Totals:
    """Cumulative counts for the agent's own counters (only the collector task writes them)."""

    call_failures: dict[str, int] = field(default_factory=dict)
    xids: dict[int, int] = field(default_factory=dict)
    sweeps: int = 0


def split_tiers(counters: Sequence[Counter]) -> tuple[frozenset[Reading], frozenset[Reading]]:
    """(fast readings, slow readings) needed by the selected counters."""
    fast: set[Reading] = set()
    slow: set[Reading] = set()
    for c in counters:
        spec = c.spec
        if spec.source is Source.READING and spec.reading is not None:
            (slow if spec.tier is Tier.SLOW else fast).add(spec.reading)
            if spec.fallback is not None:  # GPUs without GPM: read where NVML has the same quantity
                (slow if tier_of(spec.fallback) is Tier.SLOW else fast).add(spec.fallback)
    return frozenset(fast), frozenset(slow)


class Collector:
    """Runs sweeps and keeps what must survive between them (slow values, last XIDs, totals)."""

    def __init__(
        self,
        gpus: Sampler | None,
        counters: Sequence[Counter],
        *,
        slow_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        xid_window_ms: int = 300_000,
        clock_events_window_ms: int = 300_000,
        gpm_prime_interval_s: float | None = None,
    ) -> None:
        self.gpus = gpus
        self.fast, self.slow = split_tiers(counters)
        self.slow_interval_s = slow_interval_s
        self.clock = clock
        self.totals = Totals()
        self._slow_due = float("-inf")
        self._slow_gpu: dict[int, Values] = {}
        self._slow_mig: dict[MigKey, Values] = {}
        self._last_xid: dict[int, int] = {}
        # dcgm-exporter's windows (its --xid-count-window-size / --clock-events-count-window-size, 5 min).
        self.xid_window_ms = xid_window_ms
        self.clock_events_window_ms = clock_events_window_ms
        # None: no priming (the first sweep has no GPM values); the metrics subsystem primes.
        self._gpm_unprimed = gpm_prime_interval_s is not None and bool(self.slow & GPM_READINGS)
        self.gpm_prime_interval_s = gpm_prime_interval_s or 0.0
        self._count_clock_events = any(c.spec.source is Source.CLOCK_EVENTS_COUNT for c in counters)
        self._xid_log: deque[tuple[float, int, int]] = deque()
        self._clock_log: deque[tuple[float, int, int]] = deque()

    def needs(self, *, interval_s: float, include_mig: bool) -> SamplingNeeds:
        """The tiers as needs for the GPU-state owner's sweeps."""
        prime = self.gpm_prime_interval_s if self._gpm_unprimed else 0.0
        return SamplingNeeds(
            interval_s=interval_s,
            readings=self.fast,
            slow=self.slow,
            slow_interval_s=self.slow_interval_s,
            mig=include_mig,
            prime_gpm_s=prime,
        )

    def request(self, *, include_mig: bool) -> tuple[SampleRequest, bool]:
        """What the next sweep reads, and whether that includes the slow tier."""
        slow = bool(self.slow) and self.clock() >= self._slow_due
        readings = self.fast | self.slow if slow else self.fast
        return SampleRequest(readings=frozenset(readings), include_mig=include_mig), slow

    async def sweep(self, inventory: Inventory) -> Snapshot:
        # MIG-capable, not MIG-enabled: instances created behind our back must show up in the sample.
        include_mig = any(g.mig_capable for g in inventory.gpus)
        assert self.gpus is not None, "a collector fed by the GPU-state owner does not sweep"
        request, slow = self.request(include_mig=include_mig)
        if slow and self._gpm_unprimed:
            await self._prime_gpm(include_mig)
        started = time.perf_counter()
        sample = await self.gpus.sample(request)
        duration = time.perf_counter() - started
        if slow:
            self._slow_due = self.clock() + self.slow_interval_s
        return self.merge(inventory, sample, slow=slow, duration_s=duration)

    def reprime(self) -> None:
        """The GPUs changed (a MIG change, a new instance): read the slow tier at the next sweep, with a
        fresh GPM priming sample, so new instances have profiling values from their first snapshot instead
        of one or two slow intervals later."""
        self._slow_due = float("-inf")
        if self.gpm_prime_interval_s > 0 and self.slow & GPM_READINGS:
            self._gpm_unprimed = True

    async def _prime_gpm(self, include_mig: bool) -> None:
        """Take the first GPM sample now, so the sweep that follows has a rate (its values are dropped)."""
        self._gpm_unprimed = False
        assert self.gpus is not None
        await self.gpus.sample(SampleRequest(readings=self.slow & GPM_READINGS, include_mig=include_mig))
        await asyncio.sleep(self.gpm_prime_interval_s)

    def merge(self, inventory: Inventory, sample: Sample, *, slow: bool, duration_s: float) -> Snapshot:
        """Fold one sample into a new snapshot (pure apart from the carried state it updates)."""
        if slow:
            self._slow_gpu = {i: _only(v, self.slow) for i, v in sample.gpus.items()}
            self._slow_mig = {k: _only(v, self.slow) for k, v in sample.mig.items()}
        gpus = {i: _frozen(_only(v, self.fast), self._slow_gpu.get(i, _EMPTY)) for i, v in sample.gpus.items()}
        mig = {k: _frozen(_only(v, self.fast), self._slow_mig.get(k, _EMPTY)) for k, v in sample.mig.items()}
        for event in sample.xids:
            self._last_xid[event.gpu_index] = event.xid
            self.totals.xids[event.xid] = self.totals.xids.get(event.xid, 0) + 1
            self._xid_log.append((sample.taken_at, event.gpu_index, event.xid))
        if self._count_clock_events:
            for index, values in gpus.items():
                reasons = values.get(Reading.CLOCK_EVENT_REASONS)
                if reasons is not None:
                    self._clock_log.append((sample.taken_at, index, int(reasons)))
        for call, n in sample.failures.items():
            self.totals.call_failures[call] = self.totals.call_failures.get(call, 0) + n
        self.totals.sweeps += 1
        return Snapshot(
            taken_at=sample.taken_at,
            inventory=inventory,
            gpus=MappingProxyType(gpus),
            mig=MappingProxyType(mig),
            last_xid=MappingProxyType({g.index: self._last_xid.get(g.index, 0) for g in inventory.gpus}),
            health=MappingProxyType(dict(sample.health)),
            duration_s=duration_s,
            slow=slow,
            xids=tuple(sample.xids),
            xid_window=_tally(self._xid_log, sample.taken_at - self.xid_window_ms / 1000, _one),
            clock_event_window=_tally(
                self._clock_log, sample.taken_at - self.clock_events_window_ms / 1000, _clock_event_names
            ),
            xid_window_ms=self.xid_window_ms,
            clock_events_window_ms=self.clock_events_window_ms,
        )


def _only(values: Values, wanted: frozenset[Reading]) -> dict[Reading, float]:
    return {r: v for r, v in values.items() if r in wanted}


def _frozen(fast: dict[Reading, float], slow: Values) -> Values:
    if slow:
        fast.update(slow)
    return MappingProxyType(fast)


def _one(xid: int) -> tuple[int, ...]:
    return (xid,)


def _clock_event_names(mask: int) -> tuple[str, ...]:
    return tuple(name for bit, name in CLOCK_EVENT_NAMES if mask & bit)


def _tally(
    log: deque[tuple[float, int, int]], since: float, keys: Callable[[int], tuple[Any, ...]]
) -> Mapping[int, Mapping[Any, int]]:
    """Drop entries older than ``since``, then count the rest per GPU by ``keys(value)`` (dcgm-exporter
    counts the samples DCGM kept in its window, one per value and per set bit)."""
    while log and log[0][0] < since:
        log.popleft()
    out: dict[int, Tally[Any]] = {}
    for _t, index, value in log:
        out.setdefault(index, Tally()).update(keys(value))
    return MappingProxyType({i: MappingProxyType(dict(t)) for i, t in out.items()})
