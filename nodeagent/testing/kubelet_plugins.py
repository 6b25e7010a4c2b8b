"""A stand-in for the kubelet's device manager, for tests: ``Registration`` on ``<dir>/kubelet.sock`` and a
client of each registered plugin, over real unix sockets with grpclib.

The protocol rules it enforces, as the kubelet does, so a plugin that breaks them fails here too:

- ``version`` must be ``v1beta1``;
- ``resource_name`` must be an extended resource name: ``<domain>/<name>``, a DNS subdomain that is not
  ``kubernetes.io`` (or under it), a name of at most 63 characters of letters, digits, ``-``, ``_``, ``.``,
  starting and ending with a letter or digit;
- ``endpoint`` names a socket in the directory that answers, or Register fails;
- one client per resource, keyed by name: a second registration replaces the first in the map, whose
  stream stays open; when any plugin's ListAndWatch stream ends, the client current for that resource
  then is disconnected and forgotten (``runClient`` in the kubelet's ``devicemanager/plugin/v1beta1/
  handler.go``), so a previous endpoint's late stream-end takes a newer plugin with it;
- after Register the kubelet dials the plugin, asks ``GetDevicePluginOptions`` and keeps a ``ListAndWatch``
  stream open, recording every device list it gets (with its arrival time, for latency checks);
- device IDs must be unique within a resource;
- ``restart()`` does what a kubelet restart does: the stream ends, every file in the directory but the
  checkpoint is deleted, and a new ``kubelet.sock`` is created.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

pb: Any = importlib.import_module("nodeagent.backends._pb.deviceplugin_pb2")
grpc: Any = importlib.import_module("nodeagent.backends._pb.deviceplugin_grpc")

CHECKPOINT = "kubelet_internal_checkpoint"
_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def extended_resource_problem(name: str) -> str | None:
    """Why ``name`` is not an extended resource name the kubelet accepts, or None."""
    domain, sep, short = name.partition("/")
    if not sep or not domain or not short:
        return f"the ResourceName {name!r} is invalid: it must be <domain>/<name>"
    if domain == "kubernetes.io" or domain.endswith(".kubernetes.io") or domain.startswith("requests."):
        return f"the ResourceName {name!r} is invalid: {domain} is reserved"
    if len(domain) > 253 or not _SUBDOMAIN.match(domain):
        return f"the ResourceName {name!r} is invalid: {domain!r} is not a DNS subdomain"
    if len(short) > 63 or not _NAME.match(short):
        return f"the ResourceName {name!r} is invalid: {short!r} is not a qualified name"
    return None


@dataclass
class Update:
    at: float
    """time.perf_counter() when the list arrived."""
    devices: tuple[tuple[str, str, tuple[int, ...]], ...]
    """(ID, health, NUMA nodes) per device."""


@dataclass
class Plugin:
    resource: str
    endpoint: str
    channel: Channel
    stub: Any
    options: Any = None
    updates: list[Update] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    error: str = ""

    @property
    def devices(self) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
        return self.updates[-1].devices if self.updates else ()

    def healthy(self) -> tuple[str, ...]:
        return tuple(d[0] for d in self.devices if d[1] == "Healthy")


class KubeletDevicePlugins:
    """The kubelet's device-plugin side on ``directory`` (a local path: the test's root already applied)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.plugins: dict[str, Plugin] = {}
        self.registrations: list[tuple[str, str, str]] = []
        """(version, resource, endpoint) of every Register call, accepted or not."""
        self.refusals: list[str] = []
        self.replaced: list[Plugin] = []
        """Plugins a newer registration of their resource replaced (their streams stay open, as the kubelet's)."""
        self.dropped: list[Plugin] = []
        """Plugins disconnected because some stream of their resource ended."""
        self._server: Server | None = None
        self._changed = asyncio.Event()
        self._dir_fd: int | None = None
        self.hold_register: asyncio.Event | None = None
        """When set to an Event, Register waits for it before answering (a slow kubelet)."""

    # --------------------------------------------------------------------------------- life

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self._address("kubelet.sock"))
        sock.listen(16)
        sock.setblocking(False)
        server = Server([_Registration(self)])
        await server.start(sock=sock)
        self._server = server

    async def stop(self, *, remove_socket: bool = True) -> None:
        for plugin in [*self.plugins.values(), *self.replaced]:
            await self._drop(plugin)
        self.plugins.clear()
        self.replaced.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if remove_socket:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / "kubelet.sock").unlink()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    async def restart(self) -> None:
        """A kubelet restart: streams end, every file but the checkpoint is deleted, a new kubelet.sock."""
        await self.stop()
        for entry in self.directory.iterdir():
            if entry.name != CHECKPOINT:
                entry.unlink()
        await self.start()

    def _address(self, name: str) -> str:
        return f"/proc/self/fd/{self._dir_fd}/{name}"

    # ---------------------------------------------------------------------------- register

    async def register(self, request: Any) -> None:
        self.registrations.append((request.version, request.resource_name, request.endpoint))
        self._notify()
        if self.hold_register is not None:
            await self.hold_register.wait()
        problem = None
        if request.version != "v1beta1":
            problem = f"requested device plugin version {request.version!r} is not supported (v1beta1)"
        else:
            problem = extended_resource_problem(request.resource_name)
        if problem is None and (not request.endpoint or "/" in request.endpoint):
            problem = f"endpoint {request.endpoint!r} must name a socket in the device-plugins directory"
        if problem is None and not (self.directory / request.endpoint).is_socket():
            problem = f"no plugin socket {request.endpoint} in {self.directory}"
        if problem is not None:
            self.refusals.append(problem)
            raise GRPCError(Status.INVALID_ARGUMENT, problem)
        channel = Channel(path=self._address(request.endpoint))
        plugin = Plugin(request.resource_name, request.endpoint, channel, grpc.DevicePluginStub(channel))
        try:
            plugin.options = await plugin.stub.GetDevicePluginOptions(pb.Empty(), timeout=5)
        except (GRPCError, OSError, TimeoutError) as err:
            channel.close()
            problem = f"cannot dial the plugin at {request.endpoint}: {err}"
            self.refusals.append(problem)
            raise GRPCError(Status.UNAVAILABLE, problem) from err
        old = self.plugins.get(request.resource_name)
        if old is not None:
            self.replaced.append(old)
        self.plugins[request.resource_name] = plugin
        plugin.task = asyncio.create_task(self._watch(plugin), name=f"kubelet-law-{request.resource_name}")

    async def _watch(self, plugin: Plugin) -> None:
        try:
            async with plugin.stub.ListAndWatch.open() as stream:
                await stream.send_message(pb.Empty(), end=True)
                async for reply in stream:
                    ids = [d.ID for d in reply.devices]
                    if len(set(ids)) != len(ids):
                        plugin.error = f"{plugin.resource}: duplicate device IDs in ListAndWatch"
                    devices = tuple(
                        (d.ID, d.health, tuple(n.ID for n in d.topology.nodes) if d.HasField("topology") else ())
                        for d in reply.devices
                    )
                    plugin.updates.append(Update(time.perf_counter(), devices))
                    self._notify()
        except (GRPCError, OSError) as err:
            plugin.error = plugin.error or f"ListAndWatch ended: {err}"
        else:
            plugin.error = plugin.error or "ListAndWatch ended"
        finally:
            self._notify()
        current = self.plugins.pop(plugin.resource, None)  # whichever client is current now, as the kubelet does
        if current is not None:
            self.dropped.append(current)
            if current is plugin:
                plugin.channel.close()
            else:
                await self._drop(current)

    async def _drop(self, plugin: Plugin) -> None:
        if plugin.task is not None:
            plugin.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await plugin.task
        plugin.channel.close()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # -------------------------------------------------------------------------- what tests ask

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Until ``predicate()`` holds (checked at every registration and device list)."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await self._changed.wait()

    def allocatable(self, resource: str) -> int:
        plugin = self.plugins.get(resource)
        return len(plugin.healthy()) if plugin is not None else 0

    async def allocate(self, resource: str, *containers: list[str]) -> Any:
        plugin = self.plugins[resource]
        request = pb.AllocateRequest(
            container_requests=[pb.ContainerAllocateRequest(devices_ids=c) for c in containers]
        )
        return await plugin.stub.Allocate(request, timeout=5)

    async def preferred(self, resource: str, available: list[str], must_include: list[str], size: int) -> list[str]:
        plugin = self.plugins[resource]
        if not plugin.options.get_preferred_allocation_available:
            raise AssertionError(f"{resource}: the plugin does not offer GetPreferredAllocation")
        request = pb.PreferredAllocationRequest(
            container_requests=[
                pb.ContainerPreferredAllocationRequest(
                    available_deviceIDs=available, must_include_deviceIDs=must_include, allocation_size=size
                )
            ]
        )
        reply = await plugin.stub.GetPreferredAllocation(request, timeout=5)
        return list(reply.container_responses[0].deviceIDs)


class _Registration(grpc.RegistrationBase):  # type: ignore[misc]
    def __init__(self, kubelet: KubeletDevicePlugins) -> None:
        self.kubelet = kubelet

    async def Register(self, stream: Any) -> None:
        request = await stream.recv_message()
        await self.kubelet.register(request)
        await stream.send_message(pb.Empty())


async def _serve_forever(directory: Path) -> None:
    kubelet = KubeletDevicePlugins(directory)
    await kubelet.start()
    print(f"stand-in kubelet on {directory / 'kubelet.sock'}", flush=True)
    seen: dict[str, int] = {}
    try:
        while True:
            await kubelet._changed.wait()
            for name, plugin in kubelet.plugins.items():
                if len(plugin.updates) != seen.get(name):
                    seen[name] = len(plugin.updates)
                    print(f"{name}: {len(plugin.healthy())}/{len(plugin.devices)} healthy", flush=True)
    finally:
        await kubelet.stop()


if __name__ == "__main__":
    import sys

    # python -m nodeagent.testing.kubelet_plugins DIR: a kubelet for `nodeagent run --simulate --root ROOT`
    # (DIR = ROOT/var/lib/kubelet/device-plugins); prints each resource's allocatable as it changes.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(Path(sys.argv[1])))
