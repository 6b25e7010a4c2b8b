"""Kubelet PodResources v1 client: ``List`` over the kubelet's unix socket (gRPC, with grpclib).

The socket is a host path (``/var/lib/kubelet/pod-resources/kubelet.sock``), resolved through the Root.
One channel is kept open between calls and dropped after any error, so a restarted kubelet (a new
socket) is picked up by the next call. Errors become ``BackendUnavailable`` with the reason; callers
never see grpclib or protobuf types.
"""

from __future__ import annotations

import importlib
import os
import stat
from dataclasses import dataclass
from typing import Any

from nodeagent.aio import run_blocking
from nodeagent.backends.hostfs import Root
from nodeagent.errors import BackendUnavailable, HostPathError

_SUN_PATH_MAX = 107
"""Longest path a unix socket address can hold on Linux (108 bytes with the NUL)."""


@dataclass(frozen=True)
class ContainerDevices:
    """One container's devices of one resource, as the kubelet lists them."""

    namespace: str
    pod: str
    container: str
    resource_name: str
    device_ids: tuple[str, ...]


class PodResourcesClient:
    def __init__(self, root: Root, socket_path: str, *, timeout_s: float = 10.0) -> None:
        self.root = root
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._channel: Any = None
        self._stub: Any = None
        self._local = ""

    async def check(self) -> str | None:
        """None when the socket is there, else why not (for the status; no error is raised)."""
        try:
            self._local = str(await run_blocking(self.root.resolve, self.socket_path))
            mode = (await run_blocking(os.stat, self._local)).st_mode
        except HostPathError as err:
            return str(err)
        except FileNotFoundError:
            return f"no kubelet socket at {self.socket_path}"
        except OSError as err:
            return f"{self.socket_path}: {err.strerror}"
        if not stat.S_ISSOCK(mode):
            return f"{self.socket_path} is not a socket"
        if len(self._local.encode()) > _SUN_PATH_MAX:
            return f"{self._local}: path too long for a unix socket ({len(self._local)} > {_SUN_PATH_MAX})"
        return None

    async def list(self) -> tuple[ContainerDevices, ...]:
        """Every container's devices; raises BackendUnavailable when the kubelet cannot be asked."""
        problem = await self.check()
        if problem is not None:
            await self.close()
            raise BackendUnavailable(problem)
        from grpclib.exceptions import GRPCError, StreamTerminatedError

        stub = self._connect()
        try:
            reply = await stub.List(_pb("podresources_pb2").ListPodResourcesRequest(), timeout=self.timeout_s)
        except GRPCError as err:
            await self.close()
            raise BackendUnavailable(f"kubelet List failed: {err.status.name} {err.message or ''}".strip()) from err
        except (StreamTerminatedError, OSError, TimeoutError) as err:
            await self.close()
            raise BackendUnavailable(f"kubelet List failed: {type(err).__name__}: {err}") from err
        return tuple(
            ContainerDevices(
                namespace=pod.namespace,
                pod=pod.name,
                container=container.name,
                resource_name=devices.resource_name,
                device_ids=tuple(devices.device_ids),
            )
            for pod in reply.pod_resources
            for container in pod.containers
            for devices in container.devices
        )

    def _connect(self) -> Any:
        if self._stub is None:
            from grpclib.client import Channel

            self._channel = Channel(path=self._local)
            self._stub = _pb("podresources_grpc").PodResourcesListerStub(self._channel)
        return self._stub

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            channel.close()


def _pb(module: str) -> Any:
    """Generated code, imported by name: it is untyped, and mypy should not check generated files."""
    return importlib.import_module(f"nodeagent.backends._pb.{module}")
