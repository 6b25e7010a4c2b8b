"""The Node as a control surface (the labels subsystem's second job, beside GFD labels), written through the
Node gateway:

- in: the Node's ``nvidia.com/mig.config`` label, published as ``events.MIG_CONFIG_REQUESTED`` when it changes
  (the mig subsystem applies it);
- out: every ``events.MIG_READY`` becomes the ``nvidia.com/mig.config.state`` label, the ``NvidiaMigConfigured``
  condition and an Event. The condition is patched through ``nodes/status`` only when it changes. The patches
  themselves are pure (``node_status``).

The ``NvidiaGpuHealthy`` condition and the GPU-unhealthy taint are not written here: the gpuhealth subsystem
writes its own through the same gateway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nodeagent import events
from nodeagent.events import EventBus
from nodeagent.kube.client import KubeError
from nodeagent.labels import node_status
from nodeagent.model.mig import MigConfigRequest, MigReadiness
from nodeagent.nodegateway import NodeGateway

STATUS_TOPICS = (events.MIG_READY,)


class NodeControl:
    def __init__(
        self,
        node: NodeGateway,
        bus: EventBus,
        log: Any,
        record_event: Callable[[str, str, str], Awaitable[None]],
    ) -> None:
        self.node = node
        self.bus = bus
        self.log = log
        self._event = record_event
        self._lock = asyncio.Lock()
        self.mig_request: str | None = None
        """The ``nvidia.com/mig.config`` value last published as MIG_CONFIG_REQUESTED."""

    # ------------------------------------------------------------------------------------------ in

    def note_node(self, node: dict[str, Any] | None) -> None:
        """Publish the Node's ``nvidia.com/mig.config`` when it differs from what was published last."""
        if node is None:
            return
        desired = node_status.desired_mig_config(node)
        if desired != self.mig_request:
            self.mig_request = desired
            self.log.info("mig_config_requested", config=desired or "(label removed)")
            self.bus.publish(events.MIG_CONFIG_REQUESTED, MigConfigRequest(desired))

    # ----------------------------------------------------------------------------------------- out

    def out_of_sync(self, node: dict[str, Any]) -> bool:
        readiness: MigReadiness | None = self.bus.last(events.MIG_READY)
        if readiness is not None and readiness.config:
            if node_status.mig_state_patch(node, readiness) is not None:
                return True
            status, reason, message = node_status.mig_condition(readiness)
            if node_status.condition_patch(node, node_status.MIG_CONDITION, status, reason, message, now=0) is not None:
                return True
        return False

    async def _set_condition(
        self, node: dict[str, Any], cond_type: str, condition: tuple[str, str, str]
    ) -> tuple[dict[str, Any], bool]:
        status, reason, message = condition
        now = time.time()
        node, wrote = await self.node.patch(
            lambda n: node_status.condition_patch(n, cond_type, status, reason, message, now=now),
            node=node,
            status=True,
        )
        if wrote:
            self.log.info("node_condition", type=cond_type, status=status, reason=reason, message=message)
            await self._event("Normal" if status == "True" else "Warning", reason, message)
        return node, wrote

    async def sync(self, readiness: MigReadiness | None = None) -> list[str]:
        """From a fresh read of the Node: write what differs from ``readiness`` (default: the last MIG_READY);
        return what was written. (Under one lock: a Node read before another of these writes would move a
        condition's lastTransitionTime.)"""
        async with self._lock:
            node = await self.node.get()
            self.note_node(node)
            written: list[str] = []
            if readiness is None:
                readiness = self.bus.last(events.MIG_READY)
            if readiness is not None and readiness.config:
                node, wrote = await self.node.patch(lambda n: node_status.mig_state_patch(n, readiness), node=node)
                if wrote:
                    written.append(f"{node_status.MIG_STATE_LABEL}={readiness.state}")
                node, wrote = await self._set_condition(
                    node, node_status.MIG_CONDITION, node_status.mig_condition(readiness)
                )
                if wrote:
                    written.append(node_status.MIG_CONDITION)
            return written

    async def follow(self, sub: events.Subscription, on_failure: Callable[[], None]) -> None:
        """MIG states are written in the order they come, each one (not only the latest: ``pending`` published
        just before ``rebooting`` still reaches the Node first); a failed write calls ``on_failure`` (the
        subsystem retries at its next refresh, with the latest state)."""
        async for event in sub:
            if self.node.client() is None:
                continue  # no Kubernetes (yet): the subsystem's refresh says so
            try:
                await self.sync(event.payload if isinstance(event.payload, MigReadiness) else None)
            except KubeError as err:
                self.log.warning("node_status_not_written", error=str(err))
                on_failure()

    async def revert(self) -> list[str]:
        """Take back what this surface put on the Node: the ``nvidia.com/mig.config.state`` label and the
        ``NvidiaMigConfigured`` condition (``nvidia.com/mig.config`` is the user's request: it stays)."""
        changed: list[str] = []
        _, wrote = await self.node.patch(node_status.mig_state_removal_patch)
        if wrote:
            changed.append(f"Node/{self.node.node_name} {node_status.MIG_STATE_LABEL}")
        if await self.node.remove_conditions((node_status.MIG_CONDITION,)):
            changed.append(f"Node/{self.node.node_name} conditions")
        return changed
