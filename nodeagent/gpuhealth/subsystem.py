"""The ``gpuhealth`` subsystem: the GPU-state owner's XID and health events, classified into a node health
report (``events.NODE_GPU_HEALTH``), /status details per GPU, and dcgm-exporter's ``DCGM_EXP_GPU_HEALTH_STATUS``.

It reads what the GPU-state owner publishes while the metrics subsystem samples (``events.XID``,
``events.GPU_HEALTH``), so it adds no NVML call. The report changes when an incident starts or ends (an
XID window passes, NVML answers again); it is published at once unless the previous one went out less than
``gpuhealth.min_publish_interval_s`` ago, then the latest report goes out when that interval ends, so a
flapping GPU costs one Node write per interval at most; and a GPU that keeps going unhealthy stays reported
unhealthy until it has stayed healthy for a hold time that doubles with each recent fault
(``flapping.py``). The labels subsystem turns reports into the
``NvidiaGpuHealthy`` condition and the optional taint.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from nodeagent import events
from nodeagent.aio import until_stopped
from nodeagent.errors import NodeAgentError
from nodeagent.gpuhealth import classify, flapping
from nodeagent.gpuhealth.declaration import DECLARATION
from nodeagent.model.gpu import GpuHealthState, Inventory, XidEvent
from nodeagent.model.health import NodeGpuHealth
from nodeagent.plan import Plan
from nodeagent.subsystem import BaseSubsystem, Context, Phase

METRIC = "DCGM_EXP_GPU_HEALTH_STATUS"
LABELS = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "health_watch", "health_error_code")
_GAUGES: weakref.WeakKeyDictionary[CollectorRegistry, Gauge] = weakref.WeakKeyDictionary()


def health_gauge(registry: CollectorRegistry) -> Gauge:
    if registry not in _GAUGES:  # a subsystem restarted by a reload gets the same registry
        _GAUGES[registry] = Gauge(
            METRIC, "GPU health per DCGM health watch (0 pass, 10 warn, 20 fail).", LABELS, registry=registry
        )
    return _GAUGES[registry]


class GpuHealthSubsystem(BaseSubsystem):
    declaration = DECLARATION

    def __init__(self, ctx: Context, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ctx)
        self.clock = clock
        self._inventory: Inventory | None = None
        self._xids: dict[int, dict[tuple[int, int | None], classify.SeenXid]] = {}
        self._states: dict[int, GpuHealthState] = {}
        self._flaps: dict[int, flapping.FlapState] = {}
        self._hold_waits: list[float] = []
        self.report: NodeGpuHealth | None = None
        self.published: NodeGpuHealth | None = None
        self.publishes = 0
        self._last_publish = float("-inf")
        self._gauge = health_gauge(ctx.registry)

    # ----------------------------------------------------------------------------------------- input

    def record_xid(self, event: XidEvent) -> None:
        per_gpu = self._xids.setdefault(event.gpu_index, {})
        key = (event.xid, event.gpu_instance_id)
        old = per_gpu.get(key)
        per_gpu[key] = classify.SeenXid(event.xid, self.clock(), (old.count if old else 0) + 1, event.gpu_instance_id)
        c = classify.classify_xid(event.xid, self.ctx.settings.gpuhealth.ignored_xids)
        meaning = c.meaning if c else classify.IGNORED_MEANINGS.get(event.xid, "ignored")
        self.log.info("xid", gpu=event.gpu_index, xid=event.xid, meaning=meaning, ignored=c is None)

    def record_states(self, states: dict[int, GpuHealthState]) -> None:
        self._states = dict(states)

    # ------------------------------------------------------------------------------------- evaluating

    def _node_report(self, now: float) -> NodeGpuHealth:
        s = self.ctx.settings.gpuhealth
        gpus = self._inventory.gpus if self._inventory is not None else ()
        known = [(g.index, g.uuid) for g in gpus]
        for index in sorted(set(self._xids) | set(self._states)):  # a GPU gone from the inventory still counts
            if index not in {i for i, _ in known}:
                known.append((index, ""))
        raw = tuple(
            classify.gpu_report(
                index,
                uuid,
                self._xids.get(index, {}).values(),
                self._states.get(index, GpuHealthState.OK),
                now=now,
                window_s=s.xid_window_s,
                ignored=s.ignored_xids,
            )
            for index, uuid in sorted(known)
        )
        reports = []
        self._hold_waits = []
        for r in raw:
            damped, left = flapping.damp(
                r, self._flaps.setdefault(r.index, flapping.FlapState()), now=now, base_s=s.min_publish_interval_s
            )
            reports.append(damped)
            if left is not None:
                self._hold_waits.append(left)
        return NodeGpuHealth(tuple(reports), taint=s.taint)

    def evaluate(self) -> float | None:
        """Recompute the report, update metrics and status, publish when due. Returns the seconds until the
        next re-evaluation is needed (an XID window ending, a held-back publish), or None."""
        now = self.clock()
        report = self._node_report(now)
        if report != self.report:
            self.report = report
            self._export(report)
        status, reason, message = report.condition()
        phase = Phase.RUNNING if report.healthy else Phase.DEGRADED
        self.set_status(phase, "" if report.healthy else message, condition=[status, reason], gpus=self._details())
        waits = [
            w
            for w in (
                classify.next_expiry(x.values(), now=now, window_s=self.ctx.settings.gpuhealth.xid_window_s)
                for x in self._xids.values()
            )
            if w is not None
        ]
        waits.extend(self._hold_waits)
        if report != self.published:
            held = self._last_publish + self.ctx.settings.gpuhealth.min_publish_interval_s - now
            if held <= 0:
                self._publish(report, now)
            else:
                waits.append(held)
        self._forget_expired(now)
        return min(waits) if waits else None

    def _publish(self, report: NodeGpuHealth, now: float) -> None:
        self.published = report
        self._last_publish = now
        self.publishes += 1
        status, reason, _ = report.condition()
        self.log.info("gpu_health_published", healthy=report.healthy, status=status, reason=reason)
        self.ctx.bus.publish(events.NODE_GPU_HEALTH, report)

    def _forget_expired(self, now: float) -> None:
        window = self.ctx.settings.gpuhealth.xid_window_s
        for index in list(self._xids):
            kept = {k: v for k, v in self._xids[index].items() if now - v.last_seen < window}
            if kept:
                self._xids[index] = kept
            else:
                del self._xids[index]

    def _details(self) -> dict[str, Any]:
        assert self.report is not None
        return {
            str(g.index): {
                "uuid": g.uuid,
                "verdict": g.verdict.name.lower(),
                "incidents": [f"{i.watch} {i.error_code}: {i.message}" for i in g.incidents],
                "xids_seen": {str(x.xid): x.count for x in self._xids.get(g.index, {}).values()},
            }
            for g in self.report.gpus
        }

    def _export(self, report: NodeGpuHealth) -> None:
        self._gauge.clear()
        gpus = {g.index: g for g in self._inventory.gpus} if self._inventory is not None else {}
        for g in report.gpus:
            info = gpus.get(g.index)
            base = {
                "gpu": str(g.index),
                "UUID": g.uuid,
                "pci_bus_id": info.pci_bus_id if info else "",
                "device": f"nvidia{g.index}",
                "modelName": info.name if info else "",
                "Hostname": self.ctx.node_name,
            }
            for watch, (verdict, code) in classify.watch_status(g).items():
                self._gauge.labels(**base, health_watch=watch, health_error_code=code).set(int(verdict))

    async def describe(self) -> Plan:
        """For ``nodeagent plan``: it changes nothing on the node itself; what it would report."""
        s = self.ctx.settings.gpuhealth
        ignored = ", ".join(map(str, s.ignored_xids)) or "none"
        evidence = (
            f"classifies XIDs (ignored: {ignored}; window {s.xid_window_s:g} s) and NVML's view of each GPU",
            f"NvidiaGpuHealthy condition through labels; taint {'on' if s.taint else 'off'}; at most one change "
            f"per {s.min_publish_interval_s:g} s",
            f"{METRIC} per GPU and health watch",
        )
        return Plan(self.name, evidence=evidence)

    # ----------------------------------------------------------------------------------------- life

    async def start(self) -> None:
        self.set_status(Phase.STARTING)
        try:
            self._inventory = await self.ctx.gpu_state.current()
        except NodeAgentError as err:
            self.log.warning("no_inventory", error=str(err))
        self.record_states(dict(self.ctx.gpu_state.health))
        self.evaluate()

    def handle(self, event: events.Event) -> None:
        if event.topic == events.XID and isinstance(event.payload, XidEvent):
            self.record_xid(event.payload)
        elif event.topic == events.GPU_HEALTH and event.payload is not None:
            self.record_states(dict(event.payload))
        elif event.topic == events.INVENTORY_CHANGED and isinstance(event.payload, Inventory):
            self._inventory = event.payload
            self.report = None  # names and bus ids for the series

    async def run(self, stop: asyncio.Event) -> None:
        topics = (events.XID, events.GPU_HEALTH, events.INVENTORY_CHANGED)
        async with self.ctx.bus.subscribe(*topics, maxsize=256) as sub:
            wait = self.evaluate()
            while not stop.is_set():
                try:
                    event = await asyncio.wait_for(until_stopped(stop, sub.get()), timeout=wait)
                except TimeoutError:
                    event = None
                if event is not None:
                    self.handle(event)
                    while sub.pending():  # a burst of XIDs is one evaluation
                        self.handle(await sub.get())
                wait = self.evaluate()
