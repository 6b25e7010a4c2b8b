"""Pure patches for the Node as a control surface: the MIG config label and its state, the GPU Operator's
operand labels, Node conditions and the GPU-unhealthy taint. Each function returns ``None`` when the Node
already is as wanted, so a converged node makes no writes.

The contracts kept are mig-manager's (``nvidia.com/mig.config`` in, ``nvidia.com/mig.config.state`` out with
``pending``, ``rebooting``, ``success``, ``failed``; operand labels ``nvidia.com/gpu.deploy.<operand>`` set to
``paused-for-mig-change`` unless absent or ``false``, and set back to ``true`` afterwards).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from nodeagent.kube.resources import Resource
from nodeagent.model.health import TAINT_EFFECT, TAINT_KEY, NodeGpuHealth
from nodeagent.model.mig import MigReadiness

PODS = Resource("", "v1", "pods", "Pod", namespaced=True)
MIG_CONFIG_LABEL = "nvidia.com/mig.config"
MIG_STATE_LABEL = "nvidia.com/mig.config.state"
MIG_CONDITION = "NvidiaMigConfigured"
PAUSED = "paused-for-mig-change"
OPERAND_PODS: dict[str, str] = {
    "nvidia.com/gpu.deploy.device-plugin": "app=nvidia-device-plugin-daemonset",
    "nvidia.com/gpu.deploy.gpu-feature-discovery": "app=gpu-feature-discovery",
    "nvidia.com/gpu.deploy.dcgm-exporter": "app=nvidia-dcgm-exporter",
    "nvidia.com/gpu.deploy.dcgm": "app=nvidia-dcgm",
    "nvidia.com/gpu.deploy.nvsm": "",
}
"""The operand labels mig-manager pauses, with the label selector of the pods that must leave (nvsm: none)."""

_MIG_REASONS = {
    "pending": ("False", "MigConfigPending"),
    "rebooting": ("False", "MigRebootRequired"),
    "success": ("True", "MigConfigApplied"),
    "failed": ("False", "MigConfigFailed"),
}


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _labels(node: Mapping[str, Any]) -> Mapping[str, str]:
    return (node.get("metadata") or {}).get("labels") or {}


def _label_patch(node: Mapping[str, Any], changes: Mapping[str, str | None]) -> dict[str, Any] | None:
    current = _labels(node)
    diff = {k: v for k, v in changes.items() if current.get(k) != v}
    if not diff:
        return None
    rv = (node.get("metadata") or {}).get("resourceVersion")
    return {"metadata": {"resourceVersion": rv, "labels": dict(sorted(diff.items()))}}


def desired_mig_config(node: Mapping[str, Any]) -> str:
    """The config the Node's ``nvidia.com/mig.config`` label names ('' when absent)."""
    return str(_labels(node).get(MIG_CONFIG_LABEL, ""))


def mig_state_patch(node: Mapping[str, Any], readiness: MigReadiness) -> dict[str, Any] | None:
    """Set ``nvidia.com/mig.config.state``, only for the config the label asks for (mig-manager's contract)."""
    if not readiness.config or desired_mig_config(node) != readiness.config:
        return None
    return _label_patch(node, {MIG_STATE_LABEL: readiness.state})


def mig_condition(readiness: MigReadiness) -> tuple[str, str, str]:
    """(status, reason, message) of ``NvidiaMigConfigured``."""
    status, reason = _MIG_REASONS.get(readiness.state, ("Unknown", "MigConfigUnknownState"))
    message = f"MIG config {readiness.config!r}: {readiness.state}"
    if readiness.reason:
        message += f": {readiness.reason}"
    return status, reason, message


def pause_patch(node: Mapping[str, Any]) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
    """Pause the operands (absent stays absent, ``false`` stays ``false``); the labels paused now or before."""
    current = _labels(node)
    paused = tuple(k for k in OPERAND_PODS if k in current and current[k] != "false")
    return _label_patch(node, dict.fromkeys(paused, PAUSED)), paused


def restore_patch(node: Mapping[str, Any]) -> dict[str, Any] | None:
    """Every operand label left at ``paused-for-mig-change`` goes back to ``true`` (also after a restart)."""
    current = _labels(node)
    return _label_patch(node, {k: "true" for k in OPERAND_PODS if current.get(k) == PAUSED})


def pod_selectors(operands: Iterable[str]) -> list[str]:
    return [OPERAND_PODS[k] for k in operands if OPERAND_PODS.get(k)]


def condition_patch(
    node: Mapping[str, Any], cond_type: str, status: str, reason: str, message: str, *, now: float
) -> dict[str, Any] | None:
    """A strategic merge patch for ``nodes/status`` setting one condition (merged by ``type``). None when the
    condition already says this; ``lastTransitionTime`` moves only when the status changes."""
    conditions = (node.get("status") or {}).get("conditions") or []
    old = next((c for c in conditions if isinstance(c, dict) and c.get("type") == cond_type), None)
    if old is not None and (old.get("status"), old.get("reason"), old.get("message")) == (status, reason, message):
        return None
    transition = rfc3339(now)
    if old is not None and old.get("status") == status and old.get("lastTransitionTime"):
        transition = old["lastTransitionTime"]
    condition = {
        "type": cond_type,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    return {"status": {"conditions": [condition]}}


def taint_patch(node: Mapping[str, Any], health: NodeGpuHealth | None) -> dict[str, Any] | None:
    """Add or remove ``nvidia.com/gpu.unhealthy:NoSchedule`` as the health report wants; other taints stay.
    Carries the resourceVersion: the whole list is replaced, so a concurrent change must conflict."""
    wanted = health is not None and health.wants_taint
    taints = list((node.get("spec") or {}).get("taints") or [])
    ours = [t for t in taints if t.get("key") == TAINT_KEY and t.get("effect") == TAINT_EFFECT]
    if wanted == bool(ours):
        return None
    if wanted:
        taints.append({"key": TAINT_KEY, "value": "true", "effect": TAINT_EFFECT})
    else:
        taints = [t for t in taints if t not in ours]
    rv = (node.get("metadata") or {}).get("resourceVersion")
    return {"metadata": {"resourceVersion": rv}, "spec": {"taints": taints}}


def has_condition(node: Mapping[str, Any], cond_type: str) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(isinstance(c, dict) and c.get("type") == cond_type for c in conditions)


def remove_conditions_patch(node: Mapping[str, Any], types: Iterable[str]) -> dict[str, Any] | None:
    """A strategic merge patch for ``nodes/status`` deleting these conditions (for ``nodeagent revert``)."""
    present = [t for t in types if has_condition(node, t)]
    if not present:
        return None
    return {"status": {"conditions": [{"type": t, "$patch": "delete"} for t in present]}}
