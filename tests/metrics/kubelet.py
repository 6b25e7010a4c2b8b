"""A stand-in for the kubelet's PodResources v1 gRPC service, for tests.

It serves ``/v1.PodResourcesLister/List`` from our minimal .proto over a real unix socket with grpclib
(HTTP/2, gRPC framing), the way the kubelet serves /var/lib/kubelet/pod-resources/kubelet.sock. The
protocol rules it enforces, so a client that breaks them fails here too:

- only the ``List`` method exists; any other path is answered UNIMPLEMENTED (grpclib);
- the request must be a gRPC message (content-type application/grpc, length-prefixed) that decodes as
  an empty ``ListPodResourcesRequest``; a request carrying any field is INVALID_ARGUMENT;
- calls are rate limited like the kubelet's pod-resources server (a token bucket: ``burst`` calls,
  refilled at ``qps`` per second); past the limit a call gets RESOURCE_EXHAUSTED;
- ``fail_with`` makes every call fail with that status, as a kubelet that is shutting down would.

It counts calls, so tests can prove that scrapes never reach the kubelet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from nodeagent.backends._pb import podresources_pb2 as pb
from nodeagent.backends._pb.podresources_grpc import PodResourcesListerBase


@dataclass
class PodDevice:
    namespace: str
    pod: str
    container: str
    resource: str
    ids: list[str]


@dataclass
class KubeletStandIn(PodResourcesListerBase):
    pods: list[PodDevice] = field(default_factory=list)
    qps: float = 100.0
    burst: int = 10
    fail_with: Status | None = None
    calls: int = 0
    _tokens: float = 10.0
    _last: float = field(default_factory=time.monotonic)

    async def List(self, stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        self.calls += 1
        if not isinstance(request, pb.ListPodResourcesRequest) or request.ByteSize() != 0:
            raise GRPCError(Status.INVALID_ARGUMENT, "List takes an empty ListPodResourcesRequest")
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now
        if self._tokens < 1:
            raise GRPCError(Status.RESOURCE_EXHAUSTED, "rate limit exceeded")
        self._tokens -= 1
        if self.fail_with is not None:
            raise GRPCError(self.fail_with, "kubelet is shutting down")
        await stream.send_message(self.response())

    def response(self) -> Any:
        reply = pb.ListPodResourcesResponse()
        by_pod: dict[tuple[str, str], Any] = {}
        for d in self.pods:
            pod = by_pod.get((d.namespace, d.pod))
            if pod is None:
                pod = by_pod[(d.namespace, d.pod)] = reply.pod_resources.add(name=d.pod, namespace=d.namespace)
            container = next((c for c in pod.containers if c.name == d.container), None)
            if container is None:
                container = pod.containers.add(name=d.container)
            container.devices.add(resource_name=d.resource, device_ids=d.ids)
        return reply


async def serve(path: str, service: KubeletStandIn) -> Server:
    server = Server([service])
    await server.start(path=path)
    return server


async def shutdown(server: Server) -> None:
    server.close()
    await server.wait_closed()
