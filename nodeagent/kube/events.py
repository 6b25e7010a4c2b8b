"""Kubernetes Events about the agent's Node, as client-go's event recorder writes them.

Events go to the ``default`` namespace, as the kubelet's do: the API server refuses an Event about a
cluster-scoped object (the Node) in any other namespace (422, ``involvedObject.namespace`` does not match),
so the agent's Role ``nodeagent-events`` grants ``events`` create and patch in ``default`` only. They name
the Node as their ``involvedObject``, so ``kubectl describe node`` lists them. A repeat of the same event (same
type, reason and message) patches the first one's ``count`` and ``lastTimestamp`` instead of creating
another object. Recording is best effort: a failure is returned, never raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nodeagent.kube.client import KubeClient, KubeError
from nodeagent.kube.resources import EVENTS

COMPONENT = "nodeagent"
NAMESPACE = "default"
"""Where Events about a cluster-scoped object must live (checked by the real API server)."""
MESSAGE_MAX = 1024


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass
class EventRecorder:
    client: KubeClient
    node_name: str
    clock: Callable[[], float] = time.time
    _seen: dict[tuple[str, str, str], tuple[str, int]] = field(default_factory=dict)
    """(type, reason, message) → (event name, count)."""

    async def record(self, kind: str, reason: str, message: str, *, node_uid: str = "") -> str | None:
        """Create or count up the event; returns the problem when it could not be written."""
        message = message[:MESSAGE_MAX]
        key = (kind, reason, message)
        now = _rfc3339(self.clock())
        namespace = NAMESPACE
        try:
            if key in self._seen:
                name, count = self._seen[key]
                patch = {"count": count + 1, "lastTimestamp": now}
                await self.client.patch(EVENTS, name, patch, namespace=namespace)
                self._seen[key] = (name, count + 1)
                return None
            name = f"{self.node_name}.{time.time_ns():x}"
            body = self.event(name, kind=kind, reason=reason, message=message, now=now, node_uid=node_uid)
            await self.client.create(EVENTS, body, namespace)
            self._seen[key] = (name, 1)
        except KubeError as err:
            return str(err)
        return None

    def event(self, name: str, *, kind: str, reason: str, message: str, now: str, node_uid: str) -> dict[str, object]:
        involved: dict[str, str] = {"apiVersion": "v1", "kind": "Node", "name": self.node_name}
        if node_uid:
            involved["uid"] = node_uid
        return {
            "apiVersion": EVENTS.api_version,
            "kind": "Event",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "involvedObject": involved,
            "type": kind,
            "reason": reason,
            "message": message,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": COMPONENT, "host": self.node_name},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.node_name,
        }
