"""Pure patches of the node's GPU health on its Node: the ``NvidiaGpuHealthy`` condition (through
``nodes/status``) and the optional ``nvidia.com/gpu.unhealthy:NoSchedule`` taint, over the generic ones in
``kube.nodepatch``. Each returns None when the Node already is as the report wants, so a converged node makes
no writes; the condition's ``lastTransitionTime`` moves only with its status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nodeagent.kube import nodepatch
from nodeagent.model.health import CONDITION_TYPE, TAINT_EFFECT, TAINT_KEY, NodeGpuHealth


def condition_patch(node: Mapping[str, Any], report: NodeGpuHealth, *, now: float) -> dict[str, Any] | None:
    status, reason, message = report.condition()
    return nodepatch.condition_patch(node, CONDITION_TYPE, status, reason, message, now=now)


def taint_patch(node: Mapping[str, Any], report: NodeGpuHealth | None) -> dict[str, Any] | None:
    """Add or remove the taint as the report wants (None: remove it); other taints stay."""
    return nodepatch.taint_patch(node, TAINT_KEY, TAINT_EFFECT, present=report is not None and report.wants_taint)


def out_of_sync(node: Mapping[str, Any], report: NodeGpuHealth) -> bool:
    """Whether the Node shows something else than the report (someone removed the condition or the taint)."""
    return condition_patch(node, report, now=0) is not None or taint_patch(node, report) is not None


def remove_condition_patch(node: Mapping[str, Any]) -> dict[str, Any] | None:
    return nodepatch.remove_conditions_patch(node, (CONDITION_TYPE,))
