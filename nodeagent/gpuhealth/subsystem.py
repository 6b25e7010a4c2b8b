"""The ``gpuhealth`` subsystem: the GPU-state owner's XID and health events, classified into a node health
report (``events.NODE_GPU_HEALTH``) and /status details per GPU. The metrics subsystem renders the published
report as dcgm-exporter's ``DCGM_EXP_GPU_HEALTH_STATUS`` when the counters select it, so the series and the
Node condition show one state.

It reads what the GPU-state owner publishes (``events.XID`` as the backend pushes it, ``events.GPU_HEALTH``
from the owner's sweeps); it registers a health-only need (``HEALTH_INTERVAL_S``) so those sweeps run whatever
else is enabled, and shares them with the metrics subsystem's when both run. The report changes when an
incident starts or ends (an XID window passes, NVML answers again); it is published at once unless the
previous one went out less than ``gpuhealth.min_publish_interval_s`` ago, then the latest report goes out when
that interval ends, so a flapping GPU costs one Node write per interval at most; and a GPU that keeps going
unhealthy stays reported unhealthy until it has stayed healthy for a hold time that doubles with each recent
fault (``flapping.py``).

It writes each published report on its Node itself, through the Node gateway (``Context.node``, the agent's one
client and watch): the ``NvidiaGpuHealthy`` condition, an Event when it changes, and the optional
``nvidia.com/gpu.unhealthy:NoSchedule`` taint (``node_writer``; the patches are pure, ``node_status``). So the
condition follows the GPUs whatever else runs (``--only gpuhealth`` too). A failed write is retried with
backoff; someone removing the condition or the taint is seen through the gateway's watch and put right.
With no Kubernetes (``kube.mode = "off"``, or outside a cluster) nothing is written. ``revert`` takes both
back.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

from nodeagent import aio, events
from nodeagent.aio import cancel_and_join, until_stopped
from nodeagent.errors import NodeAgentError
from nodeagent.gpuhealth import classify, flapping, node_status
from nodeagent.gpuhealth.declaration import DECLARATION
from nodeagent.gpuhealth.node_writer import NodeHealthWriter
from nodeagent.gpustate import Registration, SamplingNeeds
from nodeagent.kube.client import KubeError
from nodeagent.model.gpu import GpuHealthState, Inventory, XidEvent
from nodeagent.model.health import NodeGpuHealth
from nodeagent.plan import Plan
from nodeagent.subsystem import ApplyResult, BaseSubsystem, Context, Phase

METRIC = "DCGM_EXP_GPU_HEALTH_STATUS"
HEALTH_INTERVAL_S = 10.0
"""How often the GPU-state owner sweeps for health when nothing else asks more often (metrics' default)."""
NODE_RETRY_MAX_S = 30.0
"""Longest backoff between failed writes of the Node."""


class GpuHealthSubsystem(BaseSubsystem):
    declaration = DECLARATION

    def __init__(
        self, ctx: Context, clock: Callable[[], float] = time.monotonic, *, health_interval_s: float = HEALTH_INTERVAL_S
    ) -> None:
        super().__init__(ctx)
        self.clock = clock
        self.health_interval_s = health_interval_s
        self._sampling: Registration | None = None
        self._inventory: Inventory | None = None
        self._xids: dict[int, dict[tuple[int, int | None], classify.SeenXid]] = {}
        self._states: dict[int, GpuHealthState] = {}
        self._flaps: dict[int, flapping.FlapState] = {}
        self._hold_waits: list[float] = []
        self.report: NodeGpuHealth | None = None
        self.published: NodeGpuHealth | None = None
        self.publishes = 0
        self._last_publish = float("-inf")
        self.node_writer = NodeHealthWriter(ctx.node, self.log)
        self._node_wanted = asyncio.Event()
        """The Node should be brought in line with the published report (a new one, drift, a failed write)."""
        self.node_problem = ""
        """Why the Node does not show the published report ('' when it does, or without Kubernetes)."""
        self._rng = random.Random()
        self._shown: tuple[Phase, str, list[str]] = (Phase.STARTING, "", [])

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
        status, reason, message = report.condition()
        phase = Phase.RUNNING if report.healthy else Phase.DEGRADED
        self._shown = (phase, "" if report.healthy else message, [status, reason])
        self._show()
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
        self._node_wanted.set()

    def _show(self) -> None:
        """The status: the report's phase and condition, each GPU, and whether the Node shows the report."""
        phase, reason, condition = self._shown
        node = {"error": self.node_problem, "kubernetes": self.ctx.node.problem or "connected"}
        self.set_status(phase, reason, condition=condition, gpus=self._details(), node=node)

    def _forget_expired(self, now: float) -> None:
        window = self.ctx.settings.gpuhealth.xid_window_s
        for index in list(self._xids):
            kept = {k: v for k, v in self._xids[index].items() if now - v.last_seen < window}
            if kept:
                self._xids[index] = kept
            else:
                del self._xids[index]

    def _details(self) -> dict[str, Any]:
        if self.report is None:  # an inventory change, until the next evaluation
            return {}
        return {
            str(g.index): {
                "uuid": g.uuid,
                "verdict": g.verdict.name.lower(),
                "incidents": [f"{i.watch} {i.error_code}: {i.message}" for i in g.incidents],
                "xids_seen": {str(x.xid): x.count for x in self._xids.get(g.index, {}).values()},
            }
            for g in self.report.gpus
        }

    async def describe(self) -> Plan:
        """For ``nodeagent plan``: it changes nothing on the node itself; what it would report."""
        s = self.ctx.settings.gpuhealth
        ignored = ", ".join(map(str, s.ignored_xids)) or "none"
        evidence = (
            f"classifies XIDs (ignored: {ignored}; window {s.xid_window_s:g} s) and NVML's view of each GPU",
            f"NvidiaGpuHealthy condition on the Node (through the Node gateway); taint {'on' if s.taint else 'off'}; "
            f"at most one change per {s.min_publish_interval_s:g} s",
            f"{METRIC} per GPU and health watch (by the metrics subsystem, when its counters select it)",
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
        if self._sampling is None:
            self._sampling = self.ctx.gpu_state.register(self.name, SamplingNeeds(interval_s=self.health_interval_s))
        self.evaluate()

    async def stop(self) -> None:
        if self._sampling is not None:
            self._sampling.close()
            self._sampling = None
        await super().stop()

    async def revert(self) -> ApplyResult:
        """``nodeagent revert``: the condition and the taint come off the Node."""
        if self.ctx.node.client() is None:
            return ApplyResult()
        try:
            return ApplyResult(changed=tuple(await self.node_writer.revert()))
        except KubeError as err:
            return ApplyResult(messages=(f"Node/{self.ctx.node_name}: {err}",))

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
        tasks = [
            aio.guarded_task(self._keep_node(stop), name="gpuhealth.node"),
            aio.guarded_task(self._observe_node(), name="gpuhealth.node-watch"),
        ]
        try:
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
        finally:
            await cancel_and_join(tasks)

    # ------------------------------------------------------------------------------------ the Node

    async def _keep_node(self, stop: asyncio.Event) -> None:
        """Bring the Node in line with the published report each time it should be; retry a failed write with
        backoff (a Node that does not exist yet, an API server away, a kubeconfig not there yet)."""
        failures = 0
        while True:
            retry = self._retry_delay(failures) if failures else None
            if await aio.first_of(stop, self._node_wanted, timeout_s=retry) is stop:
                return
            self._node_wanted.clear()
            report = self.published
            if report is None or not report.gpus:
                continue
            if self.ctx.node.client() is None:
                failures = 0 if self.ctx.node.settled else failures + 1  # off, or a kubeconfig awaited
                continue
            try:
                written = await self.node_writer.write(report)
            except KubeError as err:
                failures += 1
                if self.node_problem != str(err):
                    self.log.warning("node_health_not_written", error=str(err))
                self.node_problem = str(err)
            else:
                failures = 0
                self.node_problem = ""
                if written:
                    self.log.debug("node_health_written", written=written)
            self._show()

    async def _observe_node(self) -> None:
        """Through the gateway's one watch: the Node appearing, or someone taking the condition or the taint
        away, asks for a write."""
        async with self.ctx.node.observe() as changes:
            async for node in changes:
                report = self.published
                if node is None or report is None or not report.gpus:
                    continue
                if node_status.out_of_sync(node, report):
                    self._node_wanted.set()

    def _retry_delay(self, failures: int) -> float:
        cap = min(NODE_RETRY_MAX_S, 1.0 * 2 ** min(failures, 10))
        return self._rng.uniform(cap / 2, cap)
