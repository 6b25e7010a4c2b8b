"""The kubelet's DRA resource health stream, the plugin's side (KEP-4680, gRPC service
``v1alpha1.DRAResourceHealth``, method ``NodeWatchResources``, with grpclib), served on the plugin's dra.sock
beside ``DRAPlugin`` (``dra_server.DraPluginServer`` adds it). What the devices' health is, is decided by the
caller (``update``), free of gRPC.

The 1.34 kubelet's rules this follows (``pkg/kubelet/cm/dra``, gate ResourceHealthStatus):

- it opens one stream per registered plugin on the plugin's DRAPlugin connection, and opens it again 5 s after
  one ends (cleanly or not); when a stream ends it forgets the driver's health (every device Unknown) until the
  next stream's first message, so a new stream gets the whole list at once;
- each message should list every device of the driver: the kubelet stamps each listed device with its own
  receive time (the plugin's ``last_updated_time`` is not used), and a device not listed again for 30 s (its
  health timeout) reads Unknown; so the list goes out again every ``resend_s`` (kept below 30 s) even
  unchanged, and at once when any device's health changes;
- a stream the plugin ends by returning (status OK) is a clean end to the kubelet; a cancelled handler would
  leave its stream open as long as this process lives, so stopping ends the streams first.

v1alpha1 (1.34) has no field saying why a device is unhealthy: ``DeviceHealth.reason`` stays on this side.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nodeagent.backends.streams import Streams

pb: Any = importlib.import_module("nodeagent.backends._pb.dra_health_v1alpha1_pb2")
grpc: Any = importlib.import_module("nodeagent.backends._pb.dra_health_v1alpha1_grpc")
"""The generated messages and service stub, imported by name (untyped, not checked by mypy)."""

SERVICE = "v1alpha1.DRAResourceHealth"


class Health(StrEnum):
    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"
    UNKNOWN = "Unknown"


_WIRE = {Health.UNKNOWN: 0, Health.HEALTHY: 1, Health.UNHEALTHY: 2}
"""``HealthStatus`` values of the proto."""


@dataclass(frozen=True)
class DeviceHealth:
    pool: str
    device: str
    health: Health
    last_updated: int
    """Unix time (seconds) the plugin last determined it."""
    reason: str = ""
    """Why, when not Healthy (not on the wire: v1alpha1 has no such field)."""


def message(devices: tuple[DeviceHealth, ...]) -> Any:
    """The ``NodeWatchResourcesResponse`` listing ``devices``."""
    return pb.NodeWatchResourcesResponse(
        devices=[
            pb.DeviceHealth(
                device=pb.DeviceIdentifier(pool_name=d.pool, device_name=d.device),
                health=_WIRE[d.health],
                last_updated_time=d.last_updated,
            )
            for d in devices
        ]
    )


def _what(devices: tuple[DeviceHealth, ...]) -> tuple[tuple[str, str, Health], ...]:
    return tuple((d.pool, d.device, d.health) for d in devices)


class HealthFeed:
    """The devices' health now and every open NodeWatchResources stream that follows it."""

    def __init__(self, resend_s: float = 10.0) -> None:
        self.resend_s = resend_s
        self._devices: tuple[DeviceHealth, ...] = ()
        self._streams = Streams()
        self.sent = 0
        self.changes = 0

    @property
    def streams(self) -> int:
        """NodeWatchResources streams open now (the kubelet keeps one per registered plugin)."""
        return self._streams.open

    @property
    def devices(self) -> tuple[DeviceHealth, ...]:
        return self._devices

    def update(self, devices: tuple[DeviceHealth, ...]) -> bool:
        """The health from now on. When a device's health (or the list) changed, every open stream sends it at
        once (True); a newer ``last_updated`` alone goes with the next resend (False)."""
        changed = _what(devices) != _what(self._devices)
        self._devices = devices
        if changed:
            self.changes += 1
            self._streams.wake()
        return changed

    async def watch(self, stream: Any) -> None:
        """One stream: the whole list at once, on every change and every ``resend_s``, until ``end_streams``."""
        await stream.recv_message()
        with self._streams.opened():
            while not self._streams.closing:
                changed = self._streams.changed
                await stream.send_message(message(self._devices))
                self.sent += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), self.resend_s)

    async def end_streams(self) -> None:
        """End every open stream with status OK (the kubelet sees a clean end and opens a new one later); until
        ``reopen`` a new one ends at once."""
        await self._streams.end()

    def reopen(self) -> None:
        self._streams.reopen()

    def handler(self) -> Any:
        """The generated ``DRAResourceHealth`` service, answered by this feed."""
        return _Handler(self)


class _Handler(grpc.DRAResourceHealthBase):  # type: ignore[misc]
    def __init__(self, feed: HealthFeed) -> None:
        self.feed = feed

    async def NodeWatchResources(self, stream: Any) -> None:
        await self.feed.watch(stream)
