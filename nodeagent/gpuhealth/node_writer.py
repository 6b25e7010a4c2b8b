"""The gpuhealth subsystem's writes to its Node, through the Node gateway (``Context.node``): the published
report as the ``NvidiaGpuHealthy`` condition, an Event when the condition changes, and the taint when
``gpuhealth.taint`` asks for it. The patches are pure (``node_status``); this module only sends them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nodeagent.gpuhealth import node_status
from nodeagent.model.health import CONDITION_TYPE, NodeGpuHealth
from nodeagent.nodegateway import NodeGateway


class NodeHealthWriter:
    def __init__(self, node: NodeGateway, log: Any) -> None:
        self.node = node
        self.log = log
        self._lock = asyncio.Lock()
        self.written: NodeGpuHealth | None = None
        """The last report the Node was brought in line with."""

    async def write(self, report: NodeGpuHealth) -> list[str]:
        """From a fresh read of the Node: write what differs from ``report``; return what was written. Raises
        KubeError (NotFound while the Node does not exist). Under one lock: a Node read before another of
        these writes would move the condition's lastTransitionTime."""
        async with self._lock:
            node = await self.node.get()
            now = time.time()
            written: list[str] = []
            node, wrote = await self.node.patch(
                lambda n: node_status.condition_patch(n, report, now=now), node=node, status=True
            )
            if wrote:
                status, reason, message = report.condition()
                written.append(CONDITION_TYPE)
                self.log.info("node_condition", type=CONDITION_TYPE, status=status, reason=reason, message=message)
                problem = await self.node.record_event("Normal" if status == "True" else "Warning", reason, message)
                if problem:
                    self.log.debug("event_not_recorded", reason=reason, problem=problem)
            _, wrote = await self.node.patch(lambda n: node_status.taint_patch(n, report), node=node)
            if wrote:
                written.append("taint")
            self.written = report
            return written

    async def revert(self) -> list[str]:
        """Take the condition and the taint back off the Node."""
        async with self._lock:
            name = self.node.node_name
            undone: list[str] = []
            node, wrote = await self.node.patch(lambda n: node_status.taint_patch(n, None))
            if wrote:
                undone.append(f"Node/{name} taint")
            _, wrote = await self.node.patch(node_status.remove_condition_patch, node=node, status=True)
            if wrote:
                undone.append(f"Node/{name} conditions")
            self.written = None
            return undone
