"""What a subsystem asks of the GPU-state owner's sweeps, and which of them one sweep serves (pure).

Each registration declares its readings (read whenever it is served), optionally a slow tier (read when
its own slow interval is due) and its interval. One sweep serves every registration due within half the
smallest interval, so listeners with like intervals share a sweep rather than each paying for one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nodeagent.model.gpu import Reading, Sample, SampleRequest, XidEvent


@dataclass(frozen=True)
class SamplingNeeds:
    interval_s: float
    """How often this listener wants a sweep."""
    readings: frozenset[Reading] = frozenset()
    """Read at every sweep served to this listener. Empty: health only (every sweep reads health)."""
    slow: frozenset[Reading] = frozenset()
    """Read only when ``slow_interval_s`` has passed since they were last read for this listener."""
    slow_interval_s: float = 0.0
    mig: bool = False
    """Also read the MIG devices."""
    prime_gpm_s: float = 0.0
    """GPM values are rates between two samples: when > 0, the first slow sweep is preceded by a GPM sample
    taken this long before it, so the first delivery already has them."""


@dataclass(frozen=True)
class Delivery:
    """One sweep as one listener sees it."""

    sample: Sample
    """The sweep's sample; its ``xids`` are every XID since this listener's previous delivery, pushed or swept."""
    slow: bool
    """Whether this sweep read the listener's slow tier."""
    duration_s: float
    """Wall time of the backend hop."""


Listener = Callable[[Delivery], None]


@dataclass(eq=False)
class Registration:
    """A listener's place in the schedule. Times are monotonic seconds."""

    name: str
    needs: SamplingNeeds
    listener: Listener | None
    next_due: float
    slow_due: float = float("-inf")
    primed: bool = False
    xids: list[XidEvent] = field(default_factory=list)
    """XIDs pushed since the last delivery (only kept for registrations with a listener)."""
    unregister: Callable[[], None] = field(default=lambda: None, repr=False)

    def close(self) -> None:
        """Remove this listener's needs (idempotent)."""
        self.unregister()

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@dataclass(frozen=True)
class SweepPlan:
    served: tuple[tuple[Registration, bool], ...]
    """(registration, whether its slow tier is read) for every listener this sweep serves."""
    request: SampleRequest


def slack(registrations: Iterable[Registration]) -> float:
    intervals = [r.needs.interval_s for r in registrations]
    return min(intervals) / 2 if intervals else 0.0


def next_due(registrations: Iterable[Registration]) -> float:
    return min((r.next_due for r in registrations), default=float("inf"))


def plan_sweep(registrations: Iterable[Registration], now: float, *, force: Registration | None = None) -> SweepPlan:
    """The listeners one sweep at ``now`` serves and the one request that reads what all of them need."""
    regs = list(registrations)
    early = slack(regs)
    served: list[tuple[Registration, bool]] = []
    readings: set[Reading] = set()
    mig = False
    for r in regs:
        if r is not force and r.next_due > now + early:
            continue
        n = r.needs
        slow = bool(n.slow) and r.slow_due <= now + early
        served.append((r, slow))
        readings |= n.readings
        if slow:
            readings |= n.slow
        mig = mig or n.mig
    return SweepPlan(tuple(served), SampleRequest(readings=frozenset(readings), include_mig=mig))
