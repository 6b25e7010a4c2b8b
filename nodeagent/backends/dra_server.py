"""The kubelet's DRA plugin API, the plugin's side (gRPC with grpclib): ``Registration`` (plugin registration
v1: GetInfo, NotifyRegistrationStatus) on ``<kubelet root>/plugins_registry/<driver>-reg.sock``, which the
kubelet's plugin watcher finds and dials, and ``DRAPlugin`` v1 and v1beta1 (NodePrepareResources,
NodeUnprepareResources) on ``<kubelet root>/plugins/<driver>/dra.sock``, the endpoint GetInfo names, with
``v1alpha1.DRAResourceHealth`` beside them on the same socket (``dra_health_server``).

Both sockets are host paths reached through the Root (``unixsock``). What a call answers is decided by the
caller (``DraLogic``), free of gRPC. The kubelet's rules this follows (1.34, ``pkg/kubelet/cm/dra/plugin``):
PluginInfo's type is ``DRAPlugin``, its name the driver's, its ``supported_versions`` the gRPC services in
``<package>.<service>`` form (``v1.DRAPlugin``, ``v1beta1.DRAPlugin``; the kubelet picks the first it knows);
every claim of a request gets an answer in the response map, keyed by the claim's UID (an error string per
claim, never a missing one: the kubelet fails the pod for a claim left out); each call has 45 s.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from grpclib.server import Server

from nodeagent.backends.dra_health_server import HealthFeed
from nodeagent.backends.hostfs import Root
from nodeagent.backends.unixsock import bind, socket_inode_at, unlink_if
from nodeagent.backends.unixsock import directory as _directory
from nodeagent.errors import BackendUnavailable

pb_reg: Any = importlib.import_module("nodeagent.backends._pb.pluginregistration_pb2")
grpc_reg: Any = importlib.import_module("nodeagent.backends._pb.pluginregistration_grpc")
pb_v1: Any = importlib.import_module("nodeagent.backends._pb.dra_v1_pb2")
grpc_v1: Any = importlib.import_module("nodeagent.backends._pb.dra_v1_grpc")
pb_v1beta1: Any = importlib.import_module("nodeagent.backends._pb.dra_v1beta1_pb2")
grpc_v1beta1: Any = importlib.import_module("nodeagent.backends._pb.dra_v1beta1_grpc")
"""The generated messages and service stubs, imported by name: they are untyped, and mypy should not check
generated files."""

PLUGIN_TYPE = "DRAPlugin"
SERVICES = ("v1.DRAPlugin", "v1beta1.DRAPlugin")
"""What ``supported_versions`` lists, newest first: the 1.34 kubelet takes v1, a 1.32/1.33 kubelet v1beta1."""
KUBELET_TIMEOUT_S = 45.0
DRA_SOCKET = "dra.sock"


def registration_socket(driver: str) -> str:
    return f"{driver}-reg.sock"


@dataclass(frozen=True)
class ClaimRef:
    uid: str
    namespace: str
    name: str


@dataclass(frozen=True)
class PreparedDevice:
    request_names: tuple[str, ...]
    pool: str
    device: str
    cdi_ids: tuple[str, ...]


@dataclass(frozen=True)
class PrepareResult:
    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""


class DraLogic(Protocol):
    """What dra.sock answers: the plugin's decisions, free of gRPC. Every claim gets an entry."""

    async def prepare(self, claims: tuple[ClaimRef, ...]) -> Mapping[str, PrepareResult]: ...

    async def unprepare(self, claims: tuple[ClaimRef, ...]) -> Mapping[str, str]:
        """Claim UID → error ('' when unprepared)."""
        ...


class _Socket:
    """One served unix socket in a host directory."""

    def __init__(self, root: Root, host_dir: str, name: str) -> None:
        self.root = root
        self.host_dir = host_dir
        self.name = name
        self._server: Server | None = None
        self._inode: int | None = None

    @property
    def path(self) -> str:
        return f"{self.host_dir.rstrip('/')}/{self.name}"

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def start(self, handlers: list[Any]) -> None:
        """Bind (a stale socket of this name is replaced) and serve; BackendUnavailable when it cannot."""
        if self._server is not None:
            return
        sock, self._inode = bind(self.root, self.host_dir, self.name)
        server = Server(handlers)
        await server.start(sock=sock)
        self._server = server

    def present(self) -> bool:
        """Whether the socket bound is still there (the kubelet's plugin watcher drops a plugin whose socket
        goes; someone deleting it means serving again)."""
        if self._inode is None:
            return False
        try:
            with _directory(self.root, self.host_dir) as fd:
                return socket_inode_at(fd, self.name) == self._inode
        except (OSError, BackendUnavailable):  # the directory itself is gone
            return False

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await server.wait_closed()
        unlink_if(self.root, self.host_dir, self.name, self._inode)
        self._inode = None


class RegistrationServer(_Socket):
    """``Registration`` on ``<registry_dir>/<driver>-reg.sock``."""

    def __init__(
        self,
        root: Root,
        registry_dir: str,
        *,
        driver: str,
        endpoint: str,
        on_status: Callable[[bool, str], None] = lambda ok, error: None,
    ) -> None:
        super().__init__(root, registry_dir, registration_socket(driver))
        self.driver = driver
        self.endpoint = endpoint
        self.on_status = on_status
        self.info_calls = 0
        self.registered: bool | None = None
        """The kubelet's last word: True, False (``error`` says why) or None (nothing yet)."""
        self.error = ""
        self.notifications = 0
        """NotifyRegistrationStatus calls so far (a restarted kubelet registers the plugin again)."""

    async def serve(self) -> None:
        await self.start([_Registration(self)])

    def info(self) -> Any:
        self.info_calls += 1
        return pb_reg.PluginInfo(
            type=PLUGIN_TYPE, name=self.driver, endpoint=self.endpoint, supported_versions=list(SERVICES)
        )

    def status(self, registered: bool, error: str) -> None:
        self.notifications += 1
        self.registered, self.error = registered, error
        self.on_status(registered, error)


class _Registration(grpc_reg.RegistrationBase):  # type: ignore[misc]
    def __init__(self, server: RegistrationServer) -> None:
        self.server = server

    async def GetInfo(self, stream: Any) -> None:
        await stream.recv_message()
        await stream.send_message(self.server.info())

    async def NotifyRegistrationStatus(self, stream: Any) -> None:
        request = await stream.recv_message()
        self.server.status(bool(request.plugin_registered), str(request.error))
        await stream.send_message(pb_reg.RegistrationStatusResponse())


class DraPluginServer(_Socket):
    """``DRAPlugin`` v1 and v1beta1 on ``<plugin_dir>/dra.sock`` (one socket serves both packages), and the
    health stream of ``health``."""

    def __init__(self, root: Root, plugin_dir: str, logic: DraLogic, health: HealthFeed | None = None) -> None:
        super().__init__(root, plugin_dir, DRA_SOCKET)
        self.logic = logic
        self.health = health or HealthFeed()
        self.calls: dict[str, int] = {"prepare": 0, "unprepare": 0}

    async def serve(self) -> None:
        self.health.reopen()
        await self.start(
            [
                _handlers(self, pb_v1, grpc_v1.DRAPluginBase),
                _handlers(self, pb_v1beta1, grpc_v1beta1.DRAPluginBase),
                self.health.handler(),
            ]
        )

    async def stop(self) -> None:
        """Health streams end first (cleanly, as the kubelet expects), then the socket goes."""
        if self.serving:
            await self.health.end_streams()
        await super().stop()

    async def prepare(self, pb: Any, request: Any) -> Any:
        self.calls["prepare"] += 1
        refs = _refs(request)
        answers = await self.logic.prepare(refs)
        claims = {}
        for ref in refs:
            got = answers.get(ref.uid) or PrepareResult(error=f"claim {ref.namespace}/{ref.name} was not answered")
            claims[ref.uid] = pb.NodePrepareResourceResponse(
                devices=[
                    pb.Device(
                        request_names=list(d.request_names),
                        pool_name=d.pool,
                        device_name=d.device,
                        cdi_device_ids=list(d.cdi_ids),
                    )
                    for d in got.devices
                ],
                error=got.error,
            )
        return pb.NodePrepareResourcesResponse(claims=claims)

    async def unprepare(self, pb: Any, request: Any) -> Any:
        self.calls["unprepare"] += 1
        refs = _refs(request)
        answers = await self.logic.unprepare(refs)
        claims = {
            ref.uid: pb.NodeUnprepareResourceResponse(
                error=answers.get(ref.uid, f"claim {ref.namespace}/{ref.name} was not answered")
            )
            for ref in refs
        }
        return pb.NodeUnprepareResourcesResponse(claims=claims)


def _refs(request: Any) -> tuple[ClaimRef, ...]:
    return tuple(ClaimRef(str(c.uid), str(c.namespace), str(c.name)) for c in request.claims)


def _handlers(server: DraPluginServer, pb: Any, base: type) -> Any:
    """One package's generated ``DRAPlugin`` service, each call handed to the server object."""

    class Handlers(base):  # type: ignore[misc]
        async def NodePrepareResources(self, stream: Any) -> None:
            await stream.send_message(await server.prepare(pb, await stream.recv_message()))

        async def NodeUnprepareResources(self, stream: Any) -> None:
            await stream.send_message(await server.unprepare(pb, await stream.recv_message()))

    return Handlers()
