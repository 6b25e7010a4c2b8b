"""The pure classification: XIDs, GPU states, windows, and the per-watch view dcgm-exporter reports."""

from __future__ import annotations

import pytest

from nodeagent.gpuhealth.classify import (
    DEVICE_PLUGIN_IGNORED,
    WATCHES,
    SeenXid,
    classify_xid,
    gpu_report,
    next_expiry,
    watch_status,
)
from nodeagent.model.gpu import GpuHealthState
from nodeagent.model.health import GpuHealthReport, NodeGpuHealth, Verdict


@pytest.mark.parametrize("xid", DEVICE_PLUGIN_IGNORED)
def test_device_plugin_defaults_are_ignored(xid: int) -> None:
    assert classify_xid(xid) is None
    assert classify_xid(xid, ignored=()) is not None


@pytest.mark.parametrize(
    ("xid", "watch", "code", "verdict"),
    [
        (48, "MEM", "DCGM_FR_VOLATILE_DBE_DETECTED", Verdict.FAIL),
        (63, "MEM", "DCGM_FR_PENDING_ROW_REMAP", Verdict.WARN),
        (64, "MEM", "DCGM_FR_ROW_REMAP_FAILURE", Verdict.FAIL),
        (74, "NVLINK", "DCGM_FR_NVLINK_ERROR_CRITICAL", Verdict.FAIL),
        (79, "ALL", "DCGM_FR_FALLEN_OFF_BUS", Verdict.FAIL),
        (92, "MEM", "DCGM_FR_VOLATILE_SBE_DETECTED", Verdict.WARN),
        (94, "MEM", "DCGM_FR_XID_ERROR", Verdict.WARN),
        (95, "ALL", "DCGM_FR_UNCONTAINED_ERROR", Verdict.FAIL),
        (119, "DRIVER", "DCGM_FR_XID_ERROR", Verdict.FAIL),
        (120, "DRIVER", "DCGM_FR_XID_ERROR", Verdict.FAIL),
        (999, "ALL", "DCGM_FR_XID_ERROR", Verdict.FAIL),
    ],
)
def test_xid_classes(xid: int, watch: str, code: str, verdict: Verdict) -> None:
    c = classify_xid(xid)
    assert c is not None and (c.watch, c.error_code, c.verdict) == (watch, code, verdict)


def test_report_window_and_states() -> None:
    seen = [SeenXid(48, 100.0, 3), SeenXid(13, 100.0, 1), SeenXid(94, 50.0, 1, gpu_instance_id=2)]
    r = gpu_report(0, "GPU-a", seen, GpuHealthState.OK, now=120.0, window_s=60, ignored=DEVICE_PLUGIN_IGNORED)
    assert [i.message for i in r.incidents] == ["XID 48 double-bit ECC error"]
    r = gpu_report(0, "GPU-a", seen, GpuHealthState.OK, now=105.0, window_s=60, ignored=DEVICE_PLUGIN_IGNORED)
    assert (
        r.incidents[1].message.startswith("XID 94 contained ECC error") and "GPU instance 2" in r.incidents[1].message
    )
    assert next_expiry(seen, now=105.0, window_s=60) == 5.0
    assert next_expiry(seen, now=200.0, window_s=60) is None
    hung = gpu_report(1, "GPU-b", (), GpuHealthState.DEGRADED, now=0, window_s=60, ignored=())
    assert hung.verdict == Verdict.FAIL and hung.incidents[0].error_code == "DCGM_FR_NVML_API"


def test_watch_status_one_incident_per_watch_the_worst() -> None:
    seen = [SeenXid(94, 0.0, 1), SeenXid(48, 0.0, 1)]
    r = gpu_report(0, "u", seen, GpuHealthState.OK, now=1.0, window_s=60, ignored=())
    status = watch_status(r)
    assert list(status) == list(WATCHES)
    assert status["MEM"] == (Verdict.FAIL, "DCGM_FR_VOLATILE_DBE_DETECTED")
    assert status["PCIE"] == (Verdict.PASS, "DCGM_FR_OK")


def test_node_condition_texts() -> None:
    ok = NodeGpuHealth((GpuHealthReport(0, "a"), GpuHealthReport(1, "b")), taint=True)
    assert ok.condition() == ("True", "GpusHealthy", "2 of 2 GPUs healthy") and not ok.wants_taint
    bad = gpu_report(1, "GPU-b", [SeenXid(79, 0.0, 1)], GpuHealthState.OK, now=1, window_s=60, ignored=())
    node = NodeGpuHealth((GpuHealthReport(0, "a"), bad), taint=True)
    status, reason, message = node.condition()
    assert (status, reason) == ("False", "XidFallenOffBus") and node.wants_taint
    assert message == "1 of 2 GPUs unhealthy: GPU 1 (GPU-b): XID 79 GPU has fallen off the bus"


def test_flap_damping_holds_a_gpu_that_keeps_failing() -> None:
    from nodeagent.gpuhealth.flapping import FlapState, damp, hold_s

    bad = gpu_report(0, "u", [SeenXid(48, 0.0, 1)], GpuHealthState.OK, now=0, window_s=60, ignored=())
    good = GpuHealthReport(0, "u")
    state = FlapState()
    assert damp(bad, state, now=0, base_s=30) == (bad, None)
    assert damp(good, state, now=10, base_s=30) == (good, None), "one fault: no hold"
    again, _ = damp(bad, state, now=20, base_s=30)
    held, left = damp(good, state, now=25, base_s=30)
    assert held == again, "the same report while it flaps, failing or not"
    assert held.verdict == Verdict.FAIL and held.incidents[-1].reason == "GpuFlapping" and left == 60
    assert "XID 48 double-bit ECC error" in held.incidents[-1].message
    assert damp(good, state, now=85, base_s=30) == (good, None)
    assert hold_s(1, 30) == 0 and hold_s(3, 30) == 120 and hold_s(20, 30) == 3600
