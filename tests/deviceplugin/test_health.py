"""Device health: gpuhealth's classification and hold, and recovery (unlike NVIDIA's plugin)."""

from __future__ import annotations

from nodeagent.deviceplugin.health import HealthBook, Verdicts
from nodeagent.model.gpu import GpuHealthState, XidEvent


def book() -> HealthBook:
    return HealthBook(window_s=60.0, ignored=(13, 31, 43, 45, 68, 109), hold_base_s=30.0)


def test_a_critical_xid_holds_the_gpu_unhealthy_for_the_window() -> None:
    b = book()
    b.xid(XidEvent(1, "GPU-1", 79, 0.0), now=100.0)
    v = b.evaluate([0, 1], now=100.0)
    assert v.gpus == {1: "XID 79 GPU has fallen off the bus"} and v.wait_s == 60.0
    assert b.evaluate([0, 1], now=159.0).gpus == v.gpus
    assert b.evaluate([0, 1], now=160.0) == Verdicts({}, {}, None)


def test_ignored_and_warning_xids_leave_the_gpu_healthy() -> None:
    b = book()
    b.xid(XidEvent(0, "GPU-0", 13, 0.0), now=1.0)  # application fault, ignored
    b.xid(XidEvent(0, "GPU-0", 63, 0.0), now=1.0)  # row remap pending: a warning
    assert b.evaluate([0], now=1.0).gpus == {}


def test_a_lost_gpu_is_unhealthy_until_nvml_answers() -> None:
    b = book()
    b.states({0: GpuHealthState.LOST})
    assert "lost" in b.evaluate([0], now=0.0).gpus[0]
    b.states({0: GpuHealthState.OK})
    assert b.evaluate([0], now=1.0).gpus == {}


def test_a_flapping_gpu_comes_back_after_the_hold() -> None:
    b = book()
    b.xid(XidEvent(0, "GPU-0", 79, 0.0), now=0.0)
    assert b.evaluate([0], now=0.0).gpus
    assert b.evaluate([0], now=61.0).gpus == {}  # first fault: back when the window ends
    b.xid(XidEvent(0, "GPU-0", 79, 0.0), now=100.0)
    assert b.evaluate([0], now=100.0).gpus
    held = b.evaluate([0], now=161.0)  # window over, second fault: held
    assert "went unhealthy repeatedly" in held.gpus[0] and held.wait_s == 60.0  # 30 s * 2
    assert b.evaluate([0], now=221.0).gpus == {}


def test_an_xid_naming_a_gpu_instance_marks_that_mig_device_only() -> None:
    b = book()
    b.xid(XidEvent(0, "GPU-0", 48, 0.0, gpu_instance_id=9), now=0.0)
    v = b.evaluate([0], now=0.0)
    assert v.gpus == {} and v.instances == {(0, 9): "XID 48 double-bit ECC error on GPU instance 9"}
