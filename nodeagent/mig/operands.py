"""The GPU Operator's operands paused around a MIG change and restored after it, through the Node gateway.

mig-manager's contract: operand labels ``nvidia.com/gpu.deploy.<operand>`` are set to ``paused-for-mig-change``
unless absent or ``false``, the operand pods are waited for (bounded) to leave the node, and afterwards every
label left at ``paused-for-mig-change`` goes back to ``true`` (also after a restart). The patches are pure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nodeagent.kube.client import KubeError
from nodeagent.kube.nodepatch import label_patch, labels_of
from nodeagent.kube.resources import Resource
from nodeagent.nodegateway import NodeGateway

PODS = Resource("", "v1", "pods", "Pod", namespaced=True)
PAUSED = "paused-for-mig-change"
OPERAND_PODS: dict[str, str] = {
    "nvidia.com/gpu.deploy.device-plugin": "app=nvidia-device-plugin-daemonset",
    "nvidia.com/gpu.deploy.gpu-feature-discovery": "app=gpu-feature-discovery",
    "nvidia.com/gpu.deploy.dcgm-exporter": "app=nvidia-dcgm-exporter",
    "nvidia.com/gpu.deploy.dcgm": "app=nvidia-dcgm",
    "nvidia.com/gpu.deploy.nvsm": "",
}
"""The operand labels mig-manager pauses, with the label selector of the pods that must leave (nvsm: none)."""


@dataclass(frozen=True)
class OperandState:
    """The outcome of a pause or restore: whether the operands are paused, and the problem if any."""

    paused: bool
    problem: str = ""
    operands: tuple[str, ...] = ()


def pause_patch(node: Mapping[str, Any]) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
    """Pause the operands (absent stays absent, ``false`` stays ``false``); the labels paused now or before."""
    current = labels_of(node)
    paused = tuple(k for k in OPERAND_PODS if k in current and current[k] != "false")
    return label_patch(node, dict.fromkeys(paused, PAUSED)), paused


def restore_patch(node: Mapping[str, Any]) -> dict[str, Any] | None:
    """Every operand label left at ``paused-for-mig-change`` goes back to ``true``."""
    current = labels_of(node)
    return label_patch(node, {k: "true" for k in OPERAND_PODS if current.get(k) == PAUSED})


def pod_selectors(operands: Iterable[str]) -> list[str]:
    return [OPERAND_PODS[k] for k in operands if OPERAND_PODS.get(k)]


class Operands:
    def __init__(self, node: NodeGateway, log: Any) -> None:
        self.node = node
        self.log = log
        self.poll_s = 1.0
        """How often the operand pods are listed while a MIG change waits for them (mig-manager: 1 s)."""

    async def pause(self, wait_s: float) -> OperandState:
        """Pause, and wait (at most ``wait_s``) for the operand pods to leave this node."""
        try:
            node, _ = await self.node.patch(lambda n: pause_patch(n)[0])
            _, operands = pause_patch(node)
            self.log.info("operands_paused", operands=list(operands))
            left = await self._wait_for_pods(operands, wait_s)
        except KubeError as err:
            return OperandState(True, f"operand labels: {err}")
        problem = ""
        if left:
            problem = (
                f"operand pods still on node {self.node.node_name} after {wait_s:g} s: {', '.join(left)}"
                " (they hold the GPUs; the change was not started)"
            )
        return OperandState(True, problem, operands)

    async def restore(self) -> OperandState:
        try:
            await self.node.patch(restore_patch)
        except KubeError as err:
            return OperandState(False, f"operand labels: {err}")
        return OperandState(False)

    async def _wait_for_pods(self, operands: tuple[str, ...], wait_s: float) -> list[str]:
        """The operand pods still on this node when they are gone or ``wait_s`` has passed (polled, as
        mig-manager does; the agent's RBAC lists Pods but cannot watch them)."""
        client = self.node.client()
        if client is None:
            return []
        selectors = pod_selectors(operands)
        deadline = time.monotonic() + wait_s
        while True:
            left: list[str] = []
            for selector in selectors:
                listed = await client.list(
                    PODS, labelSelector=selector, fieldSelector=f"spec.nodeName={self.node.node_name}"
                )
                for pod in listed.get("items") or []:
                    meta = pod.get("metadata", {})
                    left.append(f"{meta.get('namespace', '')}/{meta.get('name', '')}")
            if not left or time.monotonic() >= deadline:
                return left
            await asyncio.sleep(min(self.poll_s, max(0.0, deadline - time.monotonic())))
