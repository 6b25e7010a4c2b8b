"""The operand labels mig pauses around a MIG change (mig-manager's contract), as pure patches."""

from __future__ import annotations

from typing import Any

from nodeagent.mig import operands as op


def node(labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "n", "resourceVersion": "7", "labels": labels or {}}}


def test_operands_pause_and_restore_as_mig_manager() -> None:
    n = node({"nvidia.com/gpu.deploy.device-plugin": "true", "nvidia.com/gpu.deploy.dcgm": "false"})
    patch, paused = op.pause_patch(n)
    assert paused == ("nvidia.com/gpu.deploy.device-plugin",)
    assert patch == {"metadata": {"resourceVersion": "7", "labels": {"nvidia.com/gpu.deploy.device-plugin": op.PAUSED}}}
    assert op.pod_selectors(paused) == ["app=nvidia-device-plugin-daemonset"]
    after = node({"nvidia.com/gpu.deploy.device-plugin": op.PAUSED, "nvidia.com/gpu.deploy.dcgm": "false"})
    assert op.restore_patch(after) == {
        "metadata": {"resourceVersion": "7", "labels": {"nvidia.com/gpu.deploy.device-plugin": "true"}}
    }
    assert op.restore_patch(n) is None
