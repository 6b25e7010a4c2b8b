"""Which profiling fields (``DCGM_FI_PROF_*``) a node cannot serve, and why. Pure.

The profiling fields come from NVML's GPM, which NVML has on Hopper and newer only. On an older GPU
(Ampere, Ada, Turing) DCGM reads them from its own profiling module, which this agent does not have, so
most of them are absent there; the few with the same quantity elsewhere in NVML come from there
(``FieldSpec.fallback``: today ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` from the utilisation rate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.metrics.fields import Counter, Source
from nodeagent.model.gpu import GPM_READINGS, Inventory


@dataclass(frozen=True)
class ProfilingGap:
    gpus: tuple[int, ...]
    """GPUs without GPM."""
    models: tuple[str, ...]
    absent: tuple[str, ...]
    """Selected profiling fields these GPUs do not have."""
    substituted: tuple[str, ...]
    """Selected profiling fields served from another NVML reading there."""

    def text(self) -> str:
        served = f"; {', '.join(self.substituted)} from NVML's utilisation rate" if self.substituted else ""
        absent = ", ".join(self.absent) or "none"
        return (
            f"no GPM (NVML's profiling metrics are Hopper and newer) on GPU {_ranges(self.gpus)} "
            f"({', '.join(self.models)}): absent {absent}{served}"
        )


def profiling_gap(inventory: Inventory, counters: Sequence[Counter]) -> ProfilingGap | None:
    """The selected profiling fields GPUs without GPM lack (None: no such GPU, or none selected)."""
    prof = [c for c in counters if c.spec.source is Source.READING and c.spec.reading in GPM_READINGS]
    gpus = sorted((g for g in inventory.gpus if not g.gpm_supported), key=lambda g: g.index)
    if not prof or not gpus:
        return None
    return ProfilingGap(
        gpus=tuple(g.index for g in gpus),
        models=tuple(sorted({g.name for g in gpus})),
        absent=tuple(c.name for c in prof if c.spec.fallback is None),
        substituted=tuple(c.name for c in prof if c.spec.fallback is not None),
    )


def _ranges(indexes: Sequence[int]) -> str:
    """0,1,2,3,5 → 0-3, 5."""
    parts: list[str] = []
    start = prev = indexes[0]
    for i in [*indexes[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ", ".join(parts)
