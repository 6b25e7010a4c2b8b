"""The metrics subsystem: DCGM-style GPU metrics from the GPU backend, served from a cache on /metrics.

Three loops, each on its own cadence: GPU sweeps (fast tier every ``metrics.interval_s``, slow tier
every ``metrics.slow_interval_s``), pod attribution from the kubelet (every ``metrics.pod_refresh_s``),
and inventory changes from the event bus. A sweep builds a snapshot, renders it once off the loop, and
swaps the rendered bytes in; the /metrics handler only serves those bytes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from aiohttp import web

from nodeagent import aio, events
from nodeagent.errors import BackendUnavailable, ConfigError, NodeAgentError, TemporaryError
from nodeagent.events import Event
from nodeagent.loops import reconcile_loop
from nodeagent.metrics import attribution, exposition
from nodeagent.metrics.agent_metrics import AgentMetrics, AgentState
from nodeagent.metrics.collector import GPM_PRIME_INTERVAL_S, Collector, Snapshot
from nodeagent.metrics.counters_csv import CounterSet, parse
from nodeagent.metrics.declaration import DECLARATION
from nodeagent.metrics.fields import default_counters
from nodeagent.metrics.response import send_parts
from nodeagent.metrics.series_labels import EntityKey, PodRef, entities
from nodeagent.model.gpu import GpuHealthState, Inventory
from nodeagent.plan import Plan
from nodeagent.subsystem import BaseSubsystem, Context, Phase

if TYPE_CHECKING:
    from nodeagent.backends.podresources import ContainerDevices, PodResourcesClient

_NO_PODS: Mapping[EntityKey, PodRef] = MappingProxyType({})


@dataclass(frozen=True)
class Observed:
    counters: CounterSet
    source: str
    """Where the counter set came from: the CSV path, or ``built-in``."""
    gpus: int


async def load_counters(path: str) -> tuple[CounterSet, str]:
    if not path:
        return CounterSet(default_counters()), "built-in"
    try:
        text = await aio.run_blocking(Path(path).read_text, encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("counters file not found", source=path, key="metrics.counters_csv") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read counters file: {err}", source=path, key="metrics.counters_csv") from None
    return parse(text, source=path), path


class MetricsSubsystem(BaseSubsystem):
    """A service: it changes nothing on the node, so it has no plan or apply, only ``describe``."""

    declaration = DECLARATION

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.exposition: exposition.Exposition | None = None
        self.snapshot: Snapshot | None = None
        self.agent_metrics = AgentMetrics()
        self._registered = False
        self._collector: Collector | None = None
        self._counters: CounterSet = CounterSet(())
        self._inventory: Inventory | None = None
        self._pods: Mapping[EntityKey, PodRef] = _NO_PODS
        self._pod_records: tuple[ContainerDevices, ...] = ()
        self._pod_client: PodResourcesClient | None = None
        self._pod_problem: str | None = None
        self._unknown_seen: frozenset[EntityKey] = frozenset()
        self._layout: tuple[Any, ...] = ()
        self._negotiated: dict[tuple[str, str], tuple[exposition.Format, bool]] = {}
        ctx.add_route("GET", "/metrics", self.handle)

    # ----------------------------------------------------------------------------------- lifecycle

    async def describe(self) -> Plan:
        """For ``nodeagent plan``: what would be exported (an empty plan with its evidence)."""
        try:
            counters, source = await load_counters(self.ctx.settings.metrics.counters_csv)
            inventory = await self.ctx.gpu_state.current()
        except NodeAgentError as err:
            return Plan(subsystem=self.name, error=str(err))
        evidence = [
            f"counters: {len(counters.counters)} fields from {source}",
            f"gpus: {len(inventory.gpus)}",
            f"listen: {self.ctx.settings.agent.listen} /metrics",
        ]
        warnings = [f"field not available without DCGM, left out: {s}" for s in counters.skipped]
        return Plan(subsystem=self.name, evidence=tuple(evidence), warnings=tuple(warnings))

    async def start(self) -> None:
        settings = self.ctx.settings.metrics
        self._counters, source = await load_counters(settings.counters_csv)
        for skipped in self._counters.skipped:
            self.log.warning("metrics_field_unavailable", field=skipped)
        try:
            self._inventory = await self.ctx.gpu_state.current()
        except NodeAgentError as err:
            raise TemporaryError(f"no GPU inventory: {err}") from err
        self._collector = Collector(
            self.ctx.gpu_state,
            self._counters.counters,
            slow_interval_s=settings.slow_interval_s,
            xid_window_ms=settings.xid_count_window_ms,
            clock_events_window_ms=settings.clock_events_count_window_ms,
            gpm_prime_interval_s=GPM_PRIME_INTERVAL_S,
        )
        if not self._registered:
            try:
                self.ctx.registry.register(self.agent_metrics)
                self._registered = True
            except ValueError as err:  # a previous instance still holds the names
                self.log.warning("agent_metrics_not_registered", error=str(err))
        if settings.pod_attribution:
            self._pod_client = self.ctx.backends.pod_resources(self.ctx.settings.kubelet.pod_resources_socket)
            await self._refresh_pods()
        else:
            self._pod_problem = "disabled by metrics.pod_attribution"
        self.set_status(
            self._status.phase,
            self._status.reason,
            counters=len(self._counters.counters),
            counters_source=source,
            interval_s=settings.interval_s,
            slow_interval_s=settings.slow_interval_s,
            pod_attribution=self._pod_text(),
        )
        await self._sweep()

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.ctx.settings.metrics
        loops = {
            "metrics:sweep": aio.periodic(self._sweep, interval_s=settings.interval_s, stop=stop, run_first=False),
            "metrics:inventory": self._watch_inventory(stop),
        }
        if self._pod_client is not None:
            loops["metrics:pods"] = aio.periodic(
                self._refresh_pods, interval_s=settings.pod_refresh_s, stop=stop, run_first=False
            )
        await aio.run_until_stopped(stop, loops)

    async def stop(self) -> None:
        if self._pod_client is not None:
            await self._pod_client.close()
        if self._registered:
            self.ctx.registry.unregister(self.agent_metrics)
            self._registered = False
        await super().stop()

    # -------------------------------------------------------------------------------------- sweeps

    async def _sweep(self) -> None:
        assert self._collector is not None and self._inventory is not None
        inventory = self._inventory
        try:
            snap = await self._collector.sweep(inventory)
        except NodeAgentError as err:  # sample() should not raise; keep serving the last snapshot
            self.set_status(Phase.DEGRADED, f"GPU sweep failed: {err}")
            return
        unknown = _not_in(inventory, snap)
        if unknown and unknown != self._unknown_seen:
            # The backend sampled devices the inventory lacks (a MIG change not yet published): label
            # them from a fresh inventory at the next sweep. Once per distinct set, not every sweep.
            self._unknown_seen = unknown
            self._inventory = await self.ctx.gpu_state.refresh() or self._inventory
        for xid in snap.xids:  # the GPU-state owner has published them; say so once in the log
            self.log.warning("gpu_xid", gpu=xid.gpu_index, xid=xid.xid, gpu_instance=xid.gpu_instance_id)
        totals = self._collector.totals
        self.agent_metrics.state = AgentState(
            collection_duration_s=snap.duration_s,
            call_failures=MappingProxyType(dict(totals.call_failures)),
            xids=MappingProxyType(dict(totals.xids)),
        )
        layout = self._current_layout(inventory)
        started = time.perf_counter()
        self.exposition = await aio.run_blocking(exposition.render, snap, layout, self.ctx.registry)
        self.snapshot = snap
        self._set_health(snap, render_s=time.perf_counter() - started)

    def _set_health(self, snap: Snapshot, *, render_s: float) -> None:
        bad = {i: h for i, h in snap.health.items() if h is not GpuHealthState.OK}
        details = {
            "gpus": len(snap.gpus),
            "mig_instances": len(snap.mig),
            "last_sweep_ms": round(snap.duration_s * 1000, 3),
            "last_render_ms": round(render_s * 1000, 3),
        }
        if bad:
            reason = "; ".join(f"gpu {i} {h}" for i, h in sorted(bad.items()))
            self.set_status(Phase.DEGRADED, reason, **details)
        else:
            self.set_status(Phase.RUNNING, "", **details)

    def _current_layout(self, inventory: Inventory) -> exposition.Layout:
        key = (inventory, self._pods, self.ctx.node_name)
        if self._layout and all(a is b for a, b in zip(self._layout[0], key, strict=True)):
            layout: exposition.Layout = self._layout[1]
            return layout
        settings = self.ctx.settings.metrics
        ents = entities(
            inventory,
            self._counters.counters,
            hostname=self.ctx.node_name,
            pods=self._pods,
            hostname_label=settings.hostname_label,
            mig_whole_gpu=settings.mig_whole_gpu_fields,
        )
        layout = exposition.build_layout(ents, self._counters.counters)
        self._layout = (key, layout)
        return layout

    async def _watch_inventory(self, stop: asyncio.Event) -> None:
        await reconcile_loop(stop, self.ctx.bus, (events.INVENTORY_CHANGED, events.MIG_CHANGED), self._on_inventory)

    async def _on_inventory(self, event: Event | None) -> None:
        if event is not None and isinstance(event.payload, Inventory) and event.payload != self._inventory:
            self._inventory = event.payload
            self._pods = self._attribute(self._pod_records)
            self.log.info("metrics_inventory_changed", gpus=len(event.payload.gpus))

    # ---------------------------------------------------------------------------------------- pods

    async def _refresh_pods(self) -> None:
        assert self._pod_client is not None
        try:
            records = await self._pod_client.list()
            problem: str | None = None
        except BackendUnavailable as err:
            records, problem = (), str(err)
        self._pod_records = records
        pods = self._attribute(records)
        if pods != self._pods:
            self._pods = pods
        if problem != self._pod_problem:
            self.log.info("pod_attribution_off" if problem else "pod_attribution_on", reason=problem or "")
            self._pod_problem = problem
        self.set_status(self._status.phase, self._status.reason, pod_attribution=self._pod_text())

    def _pod_text(self) -> str:
        if self._pod_problem:
            return f"off: {self._pod_problem}"
        return f"on: {len(self._pods)} devices in use by pods"

    def _attribute(self, records: tuple[ContainerDevices, ...]) -> Mapping[EntityKey, PodRef]:
        if not records or self._inventory is None:
            return _NO_PODS
        pods, unmatched = attribution.attribute(records, self._inventory)
        if unmatched:
            self.log.debug("pod_devices_unmatched", count=unmatched)
        return MappingProxyType(pods)

    # ---------------------------------------------------------------------------------------- HTTP

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve the cached bytes of the latest snapshot (no copy of them); never touches the GPU or the kubelet."""
        current = self.exposition
        if current is None:
            return web.Response(status=503, text="no GPU metrics collected yet\n")
        headers = request.headers
        wanted = (headers.get("Accept", ""), headers.get("Accept-Encoding", ""))
        choice = self._negotiated.get(wanted)
        if choice is None:
            if len(self._negotiated) > 64:
                self._negotiated.clear()
            choice = self._negotiated[wanted] = exposition.negotiate(*wanted)
        fmt, gzip = choice
        out = {"Content-Type": exposition.CONTENT_TYPES[fmt], "Vary": "Accept, Accept-Encoding"}
        if gzip:
            out["Content-Encoding"] = "gzip"
        return await send_parts(request, current.parts(fmt, gzip, time.time()), out)


def _not_in(inventory: Inventory, snap: Snapshot) -> frozenset[EntityKey]:
    """GPUs and MIG instances the backend sampled that the inventory we label with does not have."""
    known: set[EntityKey] = {g.index for g in inventory.gpus}
    known.update((g.index, m.gpu_instance_id) for g in inventory.gpus for m in g.mig_devices)
    sampled: list[EntityKey] = [*snap.gpus, *snap.mig]
    return frozenset(k for k in sampled if k not in known)
