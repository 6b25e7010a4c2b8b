"""Flap damping, pure: a GPU that keeps going unhealthy stays reported unhealthy until it has been healthy
for a hold time that doubles with each recent fault (as BGP route-flap damping does), so a flapping GPU
costs a few Node writes, not one per publish interval."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from nodeagent.model.health import GpuHealthReport, GpuIncident, Verdict

MEMORY_S = 3600.0
"""Faults older than this no longer count."""
HOLD_MAX_S = 3600.0
FLAPPING_REASON = "GpuFlapping"


def flapping_incident(seen: set[str]) -> GpuIncident:
    return GpuIncident(
        "ALL",
        "DCGM_FR_XID_ERROR",
        Verdict.FAIL,
        FLAPPING_REASON,
        f"went unhealthy repeatedly ({'; '.join(sorted(seen))}); reported healthy once it has stayed healthy"
        " for a while",
    )


@dataclass
class FlapState:
    faults: list[float] = field(default_factory=list)
    """When the GPU went from healthy to failing (within ``MEMORY_S``)."""
    failing: bool = False
    healthy_since: float = 0.0
    seen: set[str] = field(default_factory=set)
    """What the GPU failed with while it flaps (the report stays the same while it flaps between them)."""


def hold_s(faults: int, base_s: float) -> float:
    """How long a GPU with ``faults`` recent faults must stay healthy: none for the first fault."""
    if faults < 2:
        return 0.0
    return float(min(HOLD_MAX_S, max(base_s, 1.0) * 2.0 ** (faults - 1)))


def damp(
    report: GpuHealthReport, state: FlapState, *, now: float, base_s: float
) -> tuple[GpuHealthReport, float | None]:
    """Update ``state`` with the GPU's raw report; return the report to publish and the seconds until the
    hold ends (None when none is running). While the GPU flaps (a second fault within ``MEMORY_S``) its
    report is one stable incident naming what it failed with, failing or not, until the hold ends."""
    failing = report.verdict >= Verdict.FAIL
    state.faults = [t for t in state.faults if now - t < MEMORY_S]
    if failing and not state.failing:
        state.faults.append(now)
    if not failing and state.failing:
        state.healthy_since = now
    state.failing = failing
    if len(state.faults) < 2:
        state.seen.clear()
        return report, None
    if failing:
        state.seen |= {i.message for i in report.incidents if i.verdict >= Verdict.FAIL}
        return replace(report, incidents=(flapping_incident(state.seen),)), None
    left = state.healthy_since + hold_s(len(state.faults), base_s) - now
    if left <= 0:
        state.seen.clear()
        return report, None
    return replace(report, incidents=(flapping_incident(state.seen),)), left
