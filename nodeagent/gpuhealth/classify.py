"""What an XID or a GPU's state says about its health. Pure: no clock, no I/O.

XIDs the device plugin ignores by default (13, 31, 43, 45, 68, 109: application faults) are ignored here
too (``gpuhealth.ignored_xids``). The others become incidents in DCGM's health-watch terms (the watch and the
``DCGM_FR_*`` code dcgm-exporter puts on ``DCGM_EXP_GPU_HEALTH_STATUS``), with the meaning from NVIDIA's XID
catalog. Unlike the device plugin, which marks a GPU unhealthy until it restarts, every XID incident ends
when its window passes without the XID coming back; a GPU that fell off the bus or whose NVML calls hang is
unhealthy until NVML answers again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nodeagent.model.gpu import GpuHealthState
from nodeagent.model.health import WATCHES as _WATCHES
from nodeagent.model.health import GpuHealthReport, GpuIncident, Verdict

DEVICE_PLUGIN_IGNORED = (13, 31, 43, 45, 68, 109)
WATCHES = _WATCHES
"""dcgm-exporter's health watches, in its order (``nodeagent.model.health``; the metrics render them too)."""


@dataclass(frozen=True)
class XidClass:
    xid: int
    meaning: str
    watch: str
    error_code: str
    verdict: Verdict
    reason: str


F, W = Verdict.FAIL, Verdict.WARN
XID_TABLE: dict[int, XidClass] = {
    c.xid: c
    for c in (
        XidClass(48, "double-bit ECC error", "MEM", "DCGM_FR_VOLATILE_DBE_DETECTED", F, "XidDoubleBitEcc"),
        XidClass(
            63,
            "ECC page retirement or row-remap recorded; a GPU reset completes it",
            "MEM",
            "DCGM_FR_PENDING_ROW_REMAP",
            W,
            "XidRowRemapPending",
        ),
        XidClass(
            64,
            "ECC page retirement or row-remap recording failed",
            "MEM",
            "DCGM_FR_ROW_REMAP_FAILURE",
            F,
            "XidRowRemapFailure",
        ),
        XidClass(74, "NVLink error", "NVLINK", "DCGM_FR_NVLINK_ERROR_CRITICAL", F, "XidNvlinkError"),
        XidClass(79, "GPU has fallen off the bus", "ALL", "DCGM_FR_FALLEN_OFF_BUS", F, "XidFallenOffBus"),
        XidClass(92, "high single-bit ECC error rate", "MEM", "DCGM_FR_VOLATILE_SBE_DETECTED", W, "XidHighSbeRate"),
        XidClass(
            94,
            "contained ECC error: the affected applications were stopped, the GPU keeps serving; reset it "
            "when convenient",
            "MEM",
            "DCGM_FR_XID_ERROR",
            W,
            "XidContainedEcc",
        ),
        XidClass(
            95,
            "uncontained ECC error: the GPU needs a reset",
            "ALL",
            "DCGM_FR_UNCONTAINED_ERROR",
            F,
            "XidUncontainedEcc",
        ),
        XidClass(119, "GSP RPC timeout", "DRIVER", "DCGM_FR_XID_ERROR", F, "XidGspTimeout"),
        XidClass(120, "GSP error", "DRIVER", "DCGM_FR_XID_ERROR", F, "XidGspError"),
        XidClass(154, "GPU recovery action changed", "ALL", "DCGM_FR_XID_ERROR", W, "XidRecoveryAction"),
        XidClass(8, "GPU stopped processing (timeout)", "SM", "DCGM_FR_XID_ERROR", F, "XidGpuStopped"),
        XidClass(32, "invalid or corrupted push buffer stream (PCIe)", "PCIE", "DCGM_FR_XID_ERROR", F, "XidPushBuffer"),
        XidClass(38, "driver firmware error", "DRIVER", "DCGM_FR_XID_ERROR", F, "XidDriverFirmware"),
        XidClass(61, "micro-controller breakpoint or warning", "PMU", "DCGM_FR_XID_ERROR", F, "XidMicrocontroller"),
        XidClass(62, "internal micro-controller halt", "PMU", "DCGM_FR_XID_ERROR", F, "XidMicrocontrollerHalt"),
        XidClass(69, "graphics engine class error", "SM", "DCGM_FR_XID_ERROR", F, "XidGraphicsClass"),
        XidClass(140, "ECC unrecovered error", "MEM", "DCGM_FR_XID_ERROR", F, "XidUnrecoveredEcc"),
    )
}
IGNORED_MEANINGS = {
    13: "graphics engine exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    45: "preemptive cleanup",
    68: "video processor exception",
    109: "context switch timeout",
}


def classify_xid(xid: int, ignored: Iterable[int] = DEVICE_PLUGIN_IGNORED) -> XidClass | None:
    """The XID's class, or None when it is ignored. An XID outside the table is critical, as for the device
    plugin (which treats every XID not ignored as critical)."""
    if xid in set(ignored):
        return None
    known = XID_TABLE.get(xid)
    if known is not None:
        return known
    return XidClass(xid, "critical XID", "ALL", "DCGM_FR_XID_ERROR", F, "XidCritical")


def xid_incident(c: XidClass, gpu_instance_id: int | None = None) -> GpuIncident:
    """The incident's text stays the same while the XID repeats (its count is in /status only), so a GPU
    with a steady fault does not rewrite the Node condition."""
    where = f" on GPU instance {gpu_instance_id}" if gpu_instance_id is not None else ""
    return GpuIncident(c.watch, c.error_code, c.verdict, c.reason, f"XID {c.xid} {c.meaning}{where}")


def state_incident(state: GpuHealthState) -> GpuIncident | None:
    """What the GPU-state owner's view of a GPU says: lost (fallen off the bus), degraded (NVML hangs)."""
    if state is GpuHealthState.LOST:
        return GpuIncident(
            "ALL", "DCGM_FR_FALLEN_OFF_BUS", F, "GpuLost", "NVML reports the GPU lost (fallen off the bus)"
        )
    if state is GpuHealthState.DEGRADED:
        return GpuIncident("DRIVER", "DCGM_FR_NVML_API", F, "NvmlNotAnswering", "NVML calls on the GPU hang or fail")
    return None


@dataclass(frozen=True)
class SeenXid:
    xid: int
    last_seen: float
    count: int
    gpu_instance_id: int | None = None


def gpu_report(
    index: int,
    uuid: str,
    xids: Iterable[SeenXid],
    state: GpuHealthState,
    *,
    now: float,
    window_s: float,
    ignored: Iterable[int],
) -> GpuHealthReport:
    """The GPU's incidents now: its state's, and each XID seen within the window."""
    incidents: list[GpuIncident] = []
    from_state = state_incident(state)
    if from_state is not None:
        incidents.append(from_state)
    ignored = tuple(ignored)
    for seen in sorted(xids, key=lambda s: (s.xid, s.gpu_instance_id or -1)):
        c = classify_xid(seen.xid, ignored)
        if c is not None and now - seen.last_seen < window_s:
            incidents.append(xid_incident(c, seen.gpu_instance_id))
    return GpuHealthReport(index, uuid, tuple(incidents))


def next_expiry(xids: Iterable[SeenXid], *, now: float, window_s: float) -> float | None:
    """Seconds until the next XID incident ends (None when none is running)."""
    ends = [s.last_seen + window_s - now for s in xids if s.last_seen + window_s > now]
    return min(ends) if ends else None


def watch_status(report: GpuHealthReport) -> Mapping[str, tuple[Verdict, str]]:
    """Per health watch: the worst verdict and its error code (``GpuHealthReport.watch_status``)."""
    return report.watch_status()
