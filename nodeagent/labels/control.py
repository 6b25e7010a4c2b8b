"""The Node as a control surface, its writes: the MIG state label and condition, the GPU health condition
and taint (from the last ``MIG_READY`` and ``NODE_GPU_HEALTH`` on the bus), and the GPU Operator's operand
labels paused and restored around a MIG change. The patches themselves are pure (``node_status``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nodeagent import events
from nodeagent.events import EventBus
from nodeagent.kube.client import STRATEGIC_MERGE_PATCH, Conflict, KubeClient, KubeError
from nodeagent.kube.resources import NODES
from nodeagent.labels import node_status
from nodeagent.model.health import CONDITION_TYPE as HEALTH_CONDITION
from nodeagent.model.health import NodeGpuHealth
from nodeagent.model.mig import MigReadiness, OperandRequest, OperandState

CONFLICT_RETRIES = 3


class NodeControl:
    def __init__(
        self,
        node_name: str,
        bus: EventBus,
        log: Any,
        record_event: Callable[[str, str, str], Awaitable[None]],
    ) -> None:
        self.node_name = node_name
        self.bus = bus
        self.log = log
        self._event = record_event
        self.operand_poll_s = 1.0
        """How often the operand pods are listed while a MIG change waits for them (mig-manager: 1 s)."""

    def out_of_sync(self, node: dict[str, Any]) -> bool:
        readiness: MigReadiness | None = self.bus.last(events.MIG_READY)
        health: NodeGpuHealth | None = self.bus.last(events.NODE_GPU_HEALTH)
        if readiness is not None and readiness.config:
            if node_status.mig_state_patch(node, readiness) is not None:
                return True
            status, reason, message = node_status.mig_condition(readiness)
            if node_status.condition_patch(node, node_status.MIG_CONDITION, status, reason, message, now=0) is not None:
                return True
        if health is not None and health.gpus:
            status, reason, message = health.condition()
            if node_status.condition_patch(node, HEALTH_CONDITION, status, reason, message, now=0) is not None:
                return True
            return node_status.taint_patch(node, health) is not None
        return False

    async def patch_fresh(self, client: KubeClient, node: dict[str, Any], make: Any) -> tuple[dict[str, Any], bool]:
        """Patch the Node with ``make(node)`` (which carries its resourceVersion); on 409 read and remake."""
        name = self.node_name
        for attempt in range(CONFLICT_RETRIES):
            patch = make(node)
            if patch is None:
                return node, False
            try:
                return await client.patch(NODES, name, patch), True
            except Conflict:
                if attempt == CONFLICT_RETRIES - 1:
                    raise
                node = await client.get(NODES, name)
        return node, False

    async def set_condition(
        self, client: KubeClient, node: dict[str, Any], cond_type: str, condition: tuple[str, str, str]
    ) -> tuple[dict[str, Any], bool]:
        status, reason, message = condition
        patch = node_status.condition_patch(node, cond_type, status, reason, message, now=time.time())
        if patch is None:
            return node, False
        node = await client.patch(
            NODES, self.node_name, patch, content_type=STRATEGIC_MERGE_PATCH, subresource="status"
        )
        self.log.info("node_condition", type=cond_type, status=status, reason=reason, message=message)
        await self._event("Normal" if status == "True" else "Warning", reason, message)
        return node, True

    async def sync(self, client: KubeClient, node: dict[str, Any]) -> list[str]:
        """From a fresh read of the Node: write what differs; return what was written."""
        written: list[str] = []
        readiness: MigReadiness | None = self.bus.last(events.MIG_READY)
        if readiness is not None and readiness.config:
            node, wrote = await self.patch_fresh(client, node, lambda n: node_status.mig_state_patch(n, readiness))
            if wrote:
                written.append(f"{node_status.MIG_STATE_LABEL}={readiness.state}")
            node, wrote = await self.set_condition(
                client, node, node_status.MIG_CONDITION, node_status.mig_condition(readiness)
            )
            if wrote:
                written.append(node_status.MIG_CONDITION)
        health: NodeGpuHealth | None = self.bus.last(events.NODE_GPU_HEALTH)
        if health is not None and health.gpus:
            node, wrote = await self.set_condition(client, node, HEALTH_CONDITION, health.condition())
            if wrote:
                written.append(HEALTH_CONDITION)
            node, wrote = await self.patch_fresh(client, node, lambda n: node_status.taint_patch(n, health))
            if wrote:
                written.append("taint")
        return written

    async def operands(self, client: KubeClient, request: OperandRequest) -> OperandState:
        """Pause (and wait, bounded, for the operand pods to leave this node) or restore the operand labels."""
        name = self.node_name
        try:
            node = await client.get(NODES, name)
            if not request.pause:
                await self.patch_fresh(client, node, node_status.restore_patch)
                return OperandState(request.request_id, False)
            _, operands = node_status.pause_patch(node)
            await self.patch_fresh(client, node, lambda n: node_status.pause_patch(n)[0])
            self.log.info("operands_paused", operands=list(operands))
            left = await self.wait_for_operand_pods(client, operands, request.wait_s)
        except KubeError as err:
            return OperandState(request.request_id, request.pause, f"operand labels: {err}")
        problem = ""
        if left:
            problem = (
                f"operand pods still on node {name} after {request.wait_s:g} s: {', '.join(left)}"
                " (they hold the GPUs; the change was not started)"
            )
        return OperandState(request.request_id, True, problem, operands)

    async def wait_for_operand_pods(self, client: KubeClient, operands: tuple[str, ...], wait_s: float) -> list[str]:
        """The operand pods still on this node when they are gone or ``wait_s`` has passed (polled, as
        mig-manager does; the agent's RBAC lists Pods but cannot watch them)."""
        selectors = node_status.pod_selectors(operands)
        deadline = time.monotonic() + wait_s
        while True:
            left: list[str] = []
            for selector in selectors:
                listed = await client.list(
                    node_status.PODS, labelSelector=selector, fieldSelector=f"spec.nodeName={self.node_name}"
                )
                for pod in listed.get("items") or []:
                    meta = pod.get("metadata", {})
                    left.append(f"{meta.get('namespace', '')}/{meta.get('name', '')}")
            if not left or time.monotonic() >= deadline:
                return left
            await asyncio.sleep(min(self.operand_poll_s, max(0.0, deadline - time.monotonic())))

    async def revert(self, client: KubeClient) -> list[str]:
        """Take back what the agent put on the Node's status: its conditions, the taint, paused operands."""
        node = await client.get(NODES, self.node_name)
        undone: list[str] = []
        node, wrote = await self.patch_fresh(client, node, node_status.restore_patch)
        if wrote:
            undone.append(f"Node/{self.node_name} operand labels")
        node, wrote = await self.patch_fresh(client, node, lambda n: node_status.taint_patch(n, None))
        if wrote:
            undone.append(f"Node/{self.node_name} taint")
        patch = node_status.remove_conditions_patch(node, (node_status.MIG_CONDITION, HEALTH_CONDITION))
        if patch is not None:
            await client.patch(NODES, self.node_name, patch, content_type=STRATEGIC_MERGE_PATCH, subresource="status")
            undone.append(f"Node/{self.node_name} conditions")
        return undone
