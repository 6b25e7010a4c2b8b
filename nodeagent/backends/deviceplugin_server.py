"""Kubelet device plugin API v1beta1, the plugin's side (gRPC with grpclib): the ``DevicePlugin`` server on a
unix socket in the kubelet's device-plugins directory, and ``Register`` on the kubelet's ``kubelet.sock``.

Both sockets are host paths reached through the Root. The directory is opened once per bind or dial and the
socket is named through that descriptor (``/proc/self/fd/N/<name>``), so a link swapped in cannot redirect
it and a deep sandbox path never hits the 107-byte limit of a unix socket address. What a socket serves is
decided by the caller (``PluginLogic``); callers never see grpclib or protobuf types.

The kubelet's rules this follows: one socket per resource; ``Register`` names the socket relative to the
directory (``endpoint``); the kubelet then dials it and keeps a ``ListAndWatch`` stream open, which gets the
whole device list again whenever anything in it changes; a kubelet restart deletes every plugin socket, so
``socket_present`` turning false means the plugin must serve again and re-register.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.server import Server

from nodeagent.backends.hostfs import Root
from nodeagent.backends.streams import Streams
from nodeagent.backends.unixsock import address as _address
from nodeagent.backends.unixsock import bind as bind_socket
from nodeagent.backends.unixsock import directory as _directory
from nodeagent.backends.unixsock import socket_inode_at as _socket_inode
from nodeagent.errors import BackendUnavailable, NodeAgentError

pb: Any = importlib.import_module("nodeagent.backends._pb.deviceplugin_pb2")
grpc: Any = importlib.import_module("nodeagent.backends._pb.deviceplugin_grpc")
"""The generated messages and service stubs, imported by name: they are untyped, and mypy should not check
generated files."""

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


@dataclass(frozen=True)
class Device:
    """One device as the kubelet sees it."""

    id: str
    healthy: bool = True
    numa_nodes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Options:
    pre_start_required: bool = False
    get_preferred_allocation_available: bool = False


@dataclass(frozen=True)
class ContainerAllocation:
    """What one container gets for its devices."""

    cdi_devices: tuple[str, ...] = ()
    envs: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


class AllocationRefused(NodeAgentError):
    """A request the plugin refuses (an unknown or unhealthy device, too many devices): the kubelet gets
    ``INVALID_ARGUMENT`` with this message, and the pod fails admission with it."""


class PluginLogic(Protocol):
    """What a socket serves: the plugin's decisions, free of gRPC."""

    def preferred(self, available: tuple[str, ...], must_include: tuple[str, ...], size: int) -> tuple[str, ...]:
        """The devices to prefer for one container (best effort; the kubelet may choose others)."""
        ...

    async def allocate(self, device_ids: tuple[str, ...]) -> ContainerAllocation:
        """One container's allocation; raises AllocationRefused."""
        ...


# ------------------------------------------------------------------------------------------ the socket dir


def socket_inode(root: Root, host_dir: str, name: str) -> int | None:
    """The inode of the unix socket ``name`` in the directory, or None when there is none."""
    try:
        with _directory(root, host_dir) as fd:
            return _socket_inode(fd, name)
    except BackendUnavailable:
        return None


def sockets_in(root: Root, host_dir: str) -> tuple[str, ...]:
    """Names of the unix sockets in the directory (other plugins', the kubelet's)."""
    try:
        with _directory(root, host_dir) as fd:
            names = sorted(os.listdir(fd))  # noqa: PTH208 - a descriptor, which pathlib cannot take
            return tuple(n for n in names if _socket_inode(fd, n) is not None)
    except (BackendUnavailable, OSError):
        return ()


# ------------------------------------------------------------------------------------------------ server


class DevicePluginServer:
    """Serves one resource's ``DevicePlugin`` on ``<plugin_dir>/<socket_name>``."""

    def __init__(
        self,
        root: Root,
        plugin_dir: str,
        socket_name: str,
        logic: PluginLogic,
        *,
        options: Options = Options(),
        on_stream_end: Callable[[], None] | None = None,
    ) -> None:
        self.root = root
        self.plugin_dir = plugin_dir
        self.socket_name = socket_name
        self.logic = logic
        self.options = options
        self._devices: tuple[Device, ...] = ()
        self._streams = Streams()
        self._server: Any = None
        self._inode: int | None = None
        self.on_stream_end = on_stream_end
        """Called when a ListAndWatch stream ends: the kubelet may have dropped this plugin."""
        self.updates_sent = 0

    @property
    def streams(self) -> int:
        """ListAndWatch streams open now (the kubelet keeps one per registered resource)."""
        return self._streams.open

    @property
    def devices(self) -> tuple[Device, ...]:
        return self._devices

    def update(self, devices: tuple[Device, ...]) -> bool:
        """The device list from now on; every open ListAndWatch stream gets it at once. False: no change."""
        if devices == self._devices:
            return False
        self._devices = devices
        self._streams.wake()
        return True

    async def start(self) -> None:
        """Bind the socket (a stale one of this name is replaced) and serve. BackendUnavailable when the
        directory is missing or the socket cannot be bound."""
        if self._server is not None:
            return
        self._streams.reopen()
        sock, self._inode = bind_socket(self.root, self.plugin_dir, self.socket_name)
        server = Server([_Handlers(self)])
        await server.start(sock=sock)
        self._server = server

    @property
    def socket_path(self) -> str:
        return f"{self.plugin_dir.rstrip('/')}/{self.socket_name}"

    @property
    def serving(self) -> bool:
        return self._server is not None

    def socket_present(self) -> bool:
        """Whether the socket this server bound is still in the directory (a kubelet restart deletes it)."""
        return self._inode is not None and socket_inode(self.root, self.plugin_dir, self.socket_name) == self._inode

    async def stop(self) -> None:
        """Stop serving (open streams end) and remove the socket if it is still the one bound."""
        server, self._server = self._server, None
        if server is None:
            return
        await self._streams.end()  # a cancelled handler would leave the kubelet's stream open
        server.close()
        await server.wait_closed()
        if self.socket_present():
            with (
                contextlib.suppress(BackendUnavailable, FileNotFoundError),
                _directory(self.root, self.plugin_dir) as fd,
            ):
                os.unlink(self.socket_name, dir_fd=fd)
        self._inode = None

    # ------------------------------------------------------------------------------------ the calls

    async def list_and_watch(self, stream: Any) -> None:
        await stream.recv_message()
        try:
            with self._streams.opened():
                sent: tuple[Device, ...] | None = None
                while not self._streams.closing:
                    changed, devices = self._streams.changed, self._devices
                    if devices != sent:
                        await stream.send_message(pb.ListAndWatchResponse(devices=[_device(d) for d in devices]))
                        sent = devices
                        self.updates_sent += 1
                    await changed.wait()
        finally:
            if self.on_stream_end is not None:
                self.on_stream_end()

    async def allocate(self, stream: Any) -> None:
        request = await stream.recv_message()
        responses = []
        for container in request.container_requests:
            try:
                got = await self.logic.allocate(tuple(container.devices_ids))
            except AllocationRefused as err:
                raise GRPCError(Status.INVALID_ARGUMENT, str(err)) from err
            responses.append(
                pb.ContainerAllocateResponse(
                    envs=dict(got.envs),
                    annotations=dict(got.annotations),
                    cdi_devices=[pb.CDIDevice(name=n) for n in got.cdi_devices],
                )
            )
        await stream.send_message(pb.AllocateResponse(container_responses=responses))

    async def preferred_allocation(self, stream: Any) -> None:
        request = await stream.recv_message()
        responses = [
            pb.ContainerPreferredAllocationResponse(
                deviceIDs=list(
                    self.logic.preferred(
                        tuple(c.available_deviceIDs), tuple(c.must_include_deviceIDs), c.allocation_size
                    )
                )
            )
            for c in request.container_requests
        ]
        await stream.send_message(pb.PreferredAllocationResponse(container_responses=responses))


def _device(d: Device) -> Any:
    topology = pb.TopologyInfo(nodes=[pb.NUMANode(ID=n) for n in d.numa_nodes]) if d.numa_nodes else None
    return pb.Device(ID=d.id, health=HEALTHY if d.healthy else UNHEALTHY, topology=topology)


class _Handlers(grpc.DevicePluginBase):  # type: ignore[misc]
    """The generated service base, each call handed to the server object."""

    def __init__(self, server: DevicePluginServer) -> None:
        self.server = server

    async def GetDevicePluginOptions(self, stream: Any) -> None:
        await stream.recv_message()
        o = self.server.options
        await stream.send_message(
            pb.DevicePluginOptions(
                pre_start_required=o.pre_start_required,
                get_preferred_allocation_available=o.get_preferred_allocation_available,
            )
        )

    async def ListAndWatch(self, stream: Any) -> None:
        await self.server.list_and_watch(stream)

    async def GetPreferredAllocation(self, stream: Any) -> None:
        await self.server.preferred_allocation(stream)

    async def Allocate(self, stream: Any) -> None:
        await self.server.allocate(stream)

    async def PreStartContainer(self, stream: Any) -> None:
        await stream.recv_message()
        await stream.send_message(pb.PreStartContainerResponse())


# ---------------------------------------------------------------------------------------------- register


async def register(
    root: Root,
    plugin_dir: str,
    *,
    resource_name: str,
    endpoint: str,
    options: Options = Options(),
    timeout_s: float = 5.0,
) -> None:
    """``Registration/Register`` on ``<plugin_dir>/kubelet.sock``; BackendUnavailable with the reason (no
    kubelet, or the kubelet's refusal) when it does not succeed."""
    with _directory(root, plugin_dir) as fd:
        if _socket_inode(fd, KUBELET_SOCKET) is None:
            raise BackendUnavailable(f"no kubelet socket at {plugin_dir.rstrip('/')}/{KUBELET_SOCKET}")
        channel = Channel(path=_address(root, plugin_dir, fd, KUBELET_SOCKET))
        try:
            stub = grpc.RegistrationStub(channel)
            request = pb.RegisterRequest(
                version=API_VERSION,
                endpoint=endpoint,
                resource_name=resource_name,
                options=pb.DevicePluginOptions(
                    pre_start_required=options.pre_start_required,
                    get_preferred_allocation_available=options.get_preferred_allocation_available,
                ),
            )
            await stub.Register(request, timeout=timeout_s)
        except GRPCError as err:
            raise BackendUnavailable(
                f"the kubelet refused {resource_name}: {err.status.name} {err.message or ''}".strip()
            ) from err
        except (StreamTerminatedError, OSError, TimeoutError) as err:
            raise BackendUnavailable(f"registering {resource_name} failed: {type(err).__name__}: {err}") from err
        finally:
            channel.close()
