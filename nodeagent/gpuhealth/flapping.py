"""Flap damping, pure: a GPU that keeps going unhealthy stays reported unhealthy until it has been healthy
for a hold time that doubles with each recent fault (as BGP route-flap damping does), so a flapping GPU
costs a few Node writes, not one per publish interval."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from nodeagent.model.health import GpuHealthReport, GpuIncident, Verdict

MEMORY_S = 3600.0
"""Faults older than this no longer count."""
HOLD_MAX_S = 3600.0
FLAPPING = GpuIncident(
    "ALL",
    "DCGM_FR_XID_ERROR",
    Verdict.FAIL,
    "GpuFlapping",
    "went unhealthy repeatedly; reported healthy once it has stayed healthy for a while",
)


@dataclass
class FlapState:
    faults: list[float] = field(default_factory=list)
    """When the GPU went from healthy to failing (within ``MEMORY_S``)."""
    failing: bool = False
    healthy_since: float = 0.0


def hold_s(faults: int, base_s: float) -> float:
    """How long a GPU with ``faults`` recent faults must stay healthy: none for the first fault."""
    if faults < 2:
        return 0.0
    return float(min(HOLD_MAX_S, max(base_s, 1.0) * 2.0 ** (faults - 1)))


def damp(
    report: GpuHealthReport, state: FlapState, *, now: float, base_s: float
) -> tuple[GpuHealthReport, float | None]:
    """Update ``state`` with the GPU's raw report; return the report to publish and the seconds until the
    hold ends (None when none is running)."""
    failing = report.verdict >= Verdict.FAIL
    state.faults = [t for t in state.faults if now - t < MEMORY_S]
    if failing and not state.failing:
        state.faults.append(now)
    if not failing and state.failing:
        state.healthy_since = now
    state.failing = failing
    if failing:
        return report, None
    left = state.healthy_since + hold_s(len(state.faults), base_s) - now
    if left <= 0:
        return report, None
    return replace(report, incidents=(*report.incidents, FLAPPING)), left
