"""GPU health as the node reports it: incidents per GPU (in DCGM's health-watch terms) and the node's verdict.

Produced by ``nodeagent.gpuhealth`` (classification of XIDs and the GPU-state owner's health), which also writes
it on the Node (the ``NvidiaGpuHealthy`` condition and the optional taint); the metrics subsystem renders it as
``DCGM_EXP_GPU_HEALTH_STATUS``. Pure values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

CONDITION_TYPE = "NvidiaGpuHealthy"
TAINT_KEY = "nvidia.com/gpu.unhealthy"
TAINT_EFFECT = "NoSchedule"
WATCHES = ("PCIE", "NVLINK", "PMU", "MCU", "MEM", "SM", "INFOROM", "THERMAL", "POWER", "DRIVER", "ALL")
"""dcgm-exporter's health watches, in its order (one ``DCGM_EXP_GPU_HEALTH_STATUS`` series each)."""


class Verdict(IntEnum):
    """DCGM's health results (``DCGM_HEALTH_RESULT_*``), the values of ``DCGM_EXP_GPU_HEALTH_STATUS``."""

    PASS = 0
    WARN = 10
    FAIL = 20


@dataclass(frozen=True)
class GpuIncident:
    watch: str
    """DCGM health watch: PCIE, NVLINK, PMU, MCU, MEM, SM, INFOROM, THERMAL, POWER, DRIVER or ALL."""
    error_code: str
    """DCGM's error code name (``DCGM_FR_*``), as dcgm-exporter's ``health_error_code`` label."""
    verdict: Verdict
    reason: str
    """Short CamelCase cause for the condition's reason, e.g. ``XidFallenOffBus``."""
    message: str
    """For people: what happened and what recovers it."""


@dataclass(frozen=True)
class GpuHealthReport:
    index: int
    uuid: str
    incidents: tuple[GpuIncident, ...] = ()

    @property
    def verdict(self) -> Verdict:
        return max((i.verdict for i in self.incidents), default=Verdict.PASS)

    def watch_status(self) -> Mapping[str, tuple[Verdict, str]]:
        """Per health watch: the worst verdict and its error code (``DCGM_FR_OK`` when none), as dcgm-exporter
        reports at most one incident per watch."""
        out: dict[str, tuple[Verdict, str]] = dict.fromkeys(WATCHES, (Verdict.PASS, "DCGM_FR_OK"))
        for incident in self.incidents:
            watch = incident.watch if incident.watch in out else "ALL"
            if incident.verdict > out[watch][0]:
                out[watch] = (incident.verdict, incident.error_code)
        return out

    def summary(self) -> str:
        if not self.incidents:
            return f"GPU {self.index}: healthy"
        return f"GPU {self.index} ({self.uuid}): " + "; ".join(i.message for i in self.incidents)


@dataclass(frozen=True)
class NodeGpuHealth:
    """Payload of ``events.NODE_GPU_HEALTH``."""

    gpus: tuple[GpuHealthReport, ...]
    taint: bool = False
    """Whether the node should carry ``nvidia.com/gpu.unhealthy:NoSchedule`` while unhealthy."""

    @property
    def healthy(self) -> bool:
        return all(g.verdict < Verdict.FAIL for g in self.gpus)

    def condition(self) -> tuple[str, str, str]:
        """(status, reason, message) of the ``NvidiaGpuHealthy`` condition."""
        failing = [g for g in self.gpus if g.verdict >= Verdict.FAIL]
        warned = [g for g in self.gpus if g.verdict == Verdict.WARN]
        if failing:
            reasons = sorted({i.reason for g in failing for i in g.incidents if i.verdict >= Verdict.FAIL})
            reason = reasons[0] if len(reasons) == 1 else "GpuUnhealthy"
            lines = [g.summary() for g in failing + warned]
            return "False", reason, f"{len(failing)} of {len(self.gpus)} GPUs unhealthy: " + " | ".join(lines)
        if warned:
            lines = [g.summary() for g in warned]
            return "True", "GpuWarnings", f"{len(self.gpus)} GPUs serving, with warnings: " + " | ".join(lines)
        return "True", "GpusHealthy", f"{len(self.gpus)} of {len(self.gpus)} GPUs healthy"

    @property
    def wants_taint(self) -> bool:
        return self.taint and not self.healthy
