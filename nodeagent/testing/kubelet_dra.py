"""A stand-in for the kubelet's DRA manager and plugin watcher, for tests: it dials a plugin's registration
socket in ``plugins_registry``, then its DRAPlugin endpoint, over real unix sockets with grpclib.

The protocol rules it enforces, as the 1.34 kubelet does (``pkg/kubelet/pluginmanager``,
``pkg/kubelet/cm/dra/plugin``), so a plugin that breaks them fails here too:

- ``GetInfo`` first: ``type`` must be ``DRAPlugin``, ``name`` the driver's; ``supported_versions`` must list a
  service the kubelet knows (``v1.DRAPlugin``, ``v1beta1.DRAPlugin``; the first of the plugin's it knows is
  used), else the registration fails; ``endpoint`` must be an absolute path of a socket that answers;
- the result goes back with ``NotifyRegistrationStatus`` (refusals too, with the reason);
- every claim in a NodePrepareResources / NodeUnprepareResources request must be in the response (by UID),
  and no other; a claim left out fails (``ProtocolViolation``); each call has the kubelet's 45 s;
- health (gate ResourceHealthStatus, ``pkg/kubelet/cm/dra/healthinfo.go``, ``manager.go``): ``watch_health``
  keeps one ``v1alpha1.DRAResourceHealth/NodeWatchResources`` stream open on the plugin's endpoint, opened again
  ``health_retry_s`` (the kubelet's 5 s) after it ends; each listed device is stamped with the receive time
  (the plugin's ``last_updated_time`` is ignored), a device not listed again for ``health_timeout_s`` (30 s)
  reads Unknown, a health value outside the enum reads Unknown, the driver's health is forgotten when a stream
  ends; a stream that ends with a gRPC error instead of a clean end is recorded as such; the pod's
  ``allocatedResourcesStatus`` entry of a claim is built as the kubelet builds it (``resources_status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError

from nodeagent.backends.hostfs import Root

pb_reg: Any = importlib.import_module("nodeagent.backends._pb.pluginregistration_pb2")
grpc_reg: Any = importlib.import_module("nodeagent.backends._pb.pluginregistration_grpc")
SERVICES: dict[str, tuple[Any, Any]] = {
    "v1.DRAPlugin": (
        importlib.import_module("nodeagent.backends._pb.dra_v1_pb2"),
        importlib.import_module("nodeagent.backends._pb.dra_v1_grpc"),
    ),
    "v1beta1.DRAPlugin": (
        importlib.import_module("nodeagent.backends._pb.dra_v1beta1_pb2"),
        importlib.import_module("nodeagent.backends._pb.dra_v1beta1_grpc"),
    ),
}
pb_health: Any = importlib.import_module("nodeagent.backends._pb.dra_health_v1alpha1_pb2")
grpc_health: Any = importlib.import_module("nodeagent.backends._pb.dra_health_v1alpha1_grpc")
TIMEOUT_S = 45.0
HEALTH_RETRY_S = 5.0
HEALTH_TIMEOUT_S = 30.0
HEALTH_NAMES = {0: "Unknown", 1: "Healthy", 2: "Unhealthy"}


class ProtocolViolation(AssertionError):
    """The plugin broke a rule the kubelet enforces."""


@dataclass
class Registered:
    driver: str
    endpoint: str
    service: str


@dataclass
class HealthSeen:
    health: str
    received: float
    """Loop time the kubelet got it (what it keeps, not the plugin's ``last_updated_time``)."""


@dataclass
class HealthWatch:
    """The kubelet's health cache of one driver and what its streams saw."""

    devices: dict[str, HealthSeen] = field(default_factory=dict)
    """``pool/device`` → its health."""
    messages: list[list[tuple[str, str, str, int]]] = field(default_factory=list)
    """Every message: (pool, device, health, last_updated_time) of each listed device."""
    changed: list[tuple[str, str]] = field(default_factory=list)
    """(``pool/device``, health) each time one changed, as the kubelet's pod updates follow."""
    opened: int = 0
    ends: list[str] = field(default_factory=list)
    """How each stream ended: ``eof`` (clean) or ``error: ...``."""


@dataclass
class KubeletDra:
    """The kubelet's DRA side on a test root (host paths resolved through ``root``)."""

    root: Root
    registry_dir: str = "/var/lib/kubelet/plugins_registry"
    known: tuple[str, ...] = tuple(SERVICES)
    plugins: dict[str, Registered] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)
    health: dict[str, HealthWatch] = field(default_factory=dict)
    health_retry_s: float = HEALTH_RETRY_S
    health_timeout_s: float = HEALTH_TIMEOUT_S

    @contextlib.contextmanager
    def _channel(self, host_path: str) -> Iterator[Channel]:
        local = self.root.resolve(host_path)
        fd = os.open(local.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        channel = Channel(path=f"/proc/self/fd/{fd}/{local.name}")
        try:
            yield channel
        finally:
            channel.close()
            os.close(fd)

    def sockets(self) -> list[str]:
        local = self.root.resolve(self.registry_dir)
        return sorted(p.name for p in local.iterdir() if p.is_socket()) if local.is_dir() else []

    async def register(self, socket_name: str) -> Registered | None:
        """What the plugin watcher does with a new socket in ``plugins_registry``: None when refused."""
        with self._channel(f"{self.registry_dir}/{socket_name}") as channel:
            stub = grpc_reg.RegistrationStub(channel)
            info = await stub.GetInfo(pb_reg.InfoRequest(), timeout=TIMEOUT_S)
            problem = self._problem(info)
            if problem is None:
                service = next(s for s in info.supported_versions if s in self.known)
                try:
                    await self._answering(info.endpoint)
                except (TimeoutError, OSError) as err:
                    problem = f"cannot dial {info.endpoint}: {err}"
            await stub.NotifyRegistrationStatus(
                pb_reg.RegistrationStatus(plugin_registered=problem is None, error=problem or ""), timeout=TIMEOUT_S
            )
        if problem is not None:
            self.refusals.append(problem)
            return None
        registered = Registered(info.name, info.endpoint, service)
        self.plugins[info.name] = registered
        return registered

    def _problem(self, info: Any) -> str | None:
        if info.type != "DRAPlugin":
            return f"plugin type {info.type!r} is not DRAPlugin"
        if not info.name:
            return "plugin name is empty"
        if not info.supported_versions:
            return "empty list of supported gRPC services (aka supported versions)"
        if not any(s in self.known for s in info.supported_versions):
            return f"none of services supported by the plugin ({list(info.supported_versions)}) are supported"
        if not info.endpoint.startswith("/"):
            return f"endpoint {info.endpoint!r} is not an absolute path"
        return None

    async def _answering(self, endpoint: str) -> None:
        local = self.root.resolve(endpoint)
        if not local.is_socket():
            raise OSError(f"no socket at {endpoint}")

    def _stub(self, driver: str) -> tuple[Any, Any, str]:
        plugin = self.plugins[driver]
        pb, grpc = SERVICES[plugin.service]
        return pb, grpc, plugin.endpoint

    async def prepare(self, driver: str, claims: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
        """NodePrepareResources for (uid, namespace, name) claims: UID → the claim's answer."""
        return await self._call(driver, "NodePrepareResources", claims)

    async def unprepare(self, driver: str, claims: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
        return await self._call(driver, "NodeUnprepareResources", claims)

    async def _call(self, driver: str, method: str, claims: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
        pb, grpc, endpoint = self._stub(driver)
        request_type = getattr(pb, f"{method}Request")
        request = request_type(claims=[pb.Claim(uid=u, namespace=ns, name=n) for u, ns, n in claims])
        with self._channel(endpoint) as channel:
            response = await getattr(grpc.DRAPluginStub(channel), method)(request, timeout=TIMEOUT_S)
        asked = {u for u, _, _ in claims}
        got = set(response.claims)
        if got != asked:
            raise ProtocolViolation(
                f"{method}: claims asked {sorted(asked)}, answered {sorted(got)} (left out: {sorted(asked - got)})"
            )
        return {uid: response.claims[uid] for uid in response.claims}

    # ------------------------------------------------------------------------------------------ health

    async def watch_health(self, driver: str) -> None:
        """The kubelet's health stream for a registered plugin, until cancelled: NodeWatchResources on its
        endpoint, every message into the cache; when a stream ends the driver's health is forgotten and a new
        stream opened ``health_retry_s`` later."""
        watch = self.health.setdefault(driver, HealthWatch())
        while True:
            try:
                await self._health_stream(self.plugins[driver].endpoint, watch)
                watch.ends.append("eof")
            except (GRPCError, StreamTerminatedError, OSError) as err:
                watch.ends.append(f"error: {err}")
            finally:
                watch.devices.clear()
            await asyncio.sleep(self.health_retry_s)  # the kubelet's wait.UntilWithContext period

    @contextlib.asynccontextmanager
    async def watching(self, driver: str) -> AsyncIterator[HealthWatch]:
        """``watch_health`` in a task for the block's duration."""
        task = asyncio.create_task(self.watch_health(driver), name=f"kubelet-health-{driver}")
        try:
            yield self.health.setdefault(driver, HealthWatch())
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _health_stream(self, endpoint: str, watch: HealthWatch) -> None:
        with self._channel(endpoint) as channel:
            async with grpc_health.DRAResourceHealthStub(channel).NodeWatchResources.open() as stream:
                await stream.send_message(pb_health.NodeWatchResourcesRequest(), end=True)
                watch.opened += 1
                while (response := await stream.recv_message()) is not None:
                    self._reconcile(watch, response)

    def _reconcile(self, watch: HealthWatch, response: Any) -> None:
        """The kubelet's ``updateHealthInfo``: listed devices stamped now; unlisted ones Unknown once timed out."""
        now = asyncio.get_running_loop().time()
        listed: list[tuple[str, str, str, int]] = []
        for d in response.devices:
            health = HEALTH_NAMES.get(int(d.health), "Unknown")
            listed.append((d.device.pool_name, d.device.device_name, health, int(d.last_updated_time)))
            key = f"{d.device.pool_name}/{d.device.device_name}"
            old = watch.devices.get(key)
            if old is None or old.health != health:
                watch.changed.append((key, health))
            watch.devices[key] = HealthSeen(health, now)
        watch.messages.append(listed)
        seen = {f"{p}/{n}" for p, n, _, _ in listed}
        for key, old in watch.devices.items():
            if key not in seen and old.health != "Unknown" and now - old.received > self.health_timeout_s:
                watch.devices[key] = HealthSeen("Unknown", now)
                watch.changed.append((key, "Unknown"))

    def health_of(self, driver: str, pool: str, device: str) -> str:
        """The kubelet's ``getHealthInfo``: Unknown when never listed or not listed for ``health_timeout_s``."""
        seen = self.health.get(driver, HealthWatch()).devices.get(f"{pool}/{device}")
        if seen is None or asyncio.get_running_loop().time() - seen.received > self.health_timeout_s:
            return "Unknown"
        return seen.health

    def resources_status(self, driver: str, claim: str, devices: Sequence[Any], request: str = "") -> dict[str, Any]:
        """The ``allocatedResourcesStatus`` entry of a container's claim, as the kubelet builds it from the
        claim's prepared ``devices`` (NodePrepareResources' answer): the first CDI ID names each device."""
        name = f"claim:{claim}/{request}" if request else f"claim:{claim}"
        resources = [
            {
                "resourceID": d.cdi_device_ids[0] if d.cdi_device_ids else f"{driver}/{d.pool_name}/{d.device_name}",
                "health": self.health_of(driver, d.pool_name, d.device_name),
            }
            for d in devices
        ]
        return {"name": name, "resources": resources}


async def _serve_forever(root: Root, poll_s: float = 0.2) -> None:
    """The plugin watcher on its own: makes ``plugins_registry`` (as the kubelet does at start), then registers
    each socket that appears there, again when one is made anew (a new inode: a restarted plugin)."""
    kubelet = KubeletDra(root)
    registry = root.resolve(kubelet.registry_dir)
    registry.mkdir(parents=True, exist_ok=True)
    print(f"stand-in DRA kubelet on {registry}", flush=True)
    seen: dict[str, int] = {}
    watches: dict[str, asyncio.Task[None]] = {}
    while True:
        for name in kubelet.sockets():
            try:
                inode = (registry / name).stat().st_ino
            except OSError:
                continue
            if seen.get(name) == inode:
                continue
            seen[name] = inode
            try:
                got = await kubelet.register(name)
            except (OSError, GRPCError, TimeoutError) as err:
                print(f"{name}: registration failed: {err}", flush=True)
                continue
            print(f"{name}: registered {got.driver}" if got else f"{name}: refused: {kubelet.refusals[-1]}", flush=True)
            if got is not None:  # as the kubelet: one health stream per registered plugin, a new one on re-registration
                if got.driver in watches:
                    watches[got.driver].cancel()
                watches[got.driver] = asyncio.create_task(kubelet.watch_health(got.driver))
        await asyncio.sleep(poll_s)  # the kubelet's watcher is fsnotify; polling is enough for a stand-in


if __name__ == "__main__":
    import sys

    # python -m nodeagent.testing.kubelet_dra ROOT: a kubelet's DRA side for `nodeagent run --simulate --root ROOT`
    # (its plugins_registry under ROOT/var/lib/kubelet); prints each registration.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(Root(sys.argv[1])))
