"""Fleet simulation: 200 agents' labels subsystems (one process) against the test API server.

Each simulated agent is a real ``LabelsSubsystem`` with its own Node, its own Kubernetes client and event
bus, publishing to its Node (merge-patch), a NodeFeature and the shared ``nvidia`` RuntimeClass. Measured:

1. startup: all agents start at once; the writes they make, how they spread over time (start jitter),
   and the most writes in any one second;
2. converged: writes per minute once every agent is running (must be zero) and requests per agent per
   hour, measured over a window with the watch and resync periods shortened so both recur inside it, each
   kind of request then scaled back to the default periods (requests are proportional to the rate);
3. a MIG change on some agents: time from the event to the new label on their Node (goal: 2 s);
4. GPU health events on 5% of the nodes (their ``gpuhealth`` subsystem fed XIDs and NVML health changes):
   Node writes per node per hour for a steady fault, XIDs returning after each window and NVML flapping,
   measured with the XID window and the publish interval shortened by ``HEALTH_SPEEDUP`` and scaled back.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nodeagent import testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import percentile, table
from nodeagent import events, logs
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.gpuhealth.subsystem import GpuHealthSubsystem
from nodeagent.kube.client import FunnelSettings, KubeClient
from nodeagent.kube.credentials import Credentials
from nodeagent.labels.subsystem import LabelsSubsystem
from nodeagent.model.gpu import GpuHealthState, XidEvent
from nodeagent.nodegateway import NodeGateway
from nodeagent.settings import Settings, replace
from nodeagent.subsystem import Phase
from nodeagent.testing.apiserver import TestApiServer

AGENTS = 200
START_JITTER_S = 10.0
WATCH_SPEEDUP = 15.0
"""The Node watch's period is divided by this in the converged window..."""
RESYNC_SPEEDUP = 180.0
"""...and the resync period by this, so both recur inside the window; each kind of request is scaled back
by its own factor."""
WINDOW_S = 40.0
CHANGED_AGENTS = 20
HEALTH_AGENTS = AGENTS * 5 // 100
HEALTH_SPEEDUP = 30.0
"""The XID window and the publish interval are divided by this during the health measurement."""
HEALTH_WINDOW_S = 20.0
REPO = Path(__file__).resolve().parent.parent
TOKEN = "fleet-agent"


def node_name(index: int) -> str:
    return f"gpu-node-{index:03d}"


def _settings(resync_s: float) -> Settings:
    s = replace(Settings(), "agent", state_dir="/var/lib/nodeagent")
    health = Settings().gpuhealth
    s = replace(
        s,
        "gpuhealth",
        xid_window_s=health.xid_window_s / HEALTH_SPEEDUP,
        min_publish_interval_s=health.min_publish_interval_s / HEALTH_SPEEDUP,
    )
    return replace(
        s,
        "labels",
        nfd_file=False,
        node_patch=True,
        node_feature=True,
        runtime_classes=True,
        mig_strategy="mixed",
        start_jitter_s=START_JITTER_S,
        resync_s=resync_s,
    )


class Agent:
    """One simulated node's labels subsystem on its own Node gateway and Kubernetes client."""

    def __init__(self, index: int, client: KubeClient, root: Path, backend: SimGpuBackend, resync_s: float) -> None:
        self.name = node_name(index)
        ctx = testing.context(Root(root), _settings(resync_s), gpus=backend, node_name=self.name)
        self.sub = LabelsSubsystem(ctx)
        ctx.node.watch_timeout_s = max(1, round(NodeGateway.watch_timeout_s / WATCH_SPEEDUP))
        self.client = client
        ctx.node.use(self.client)
        self.stop = asyncio.Event()
        self.task: asyncio.Future[None] | None = None

    async def start(self, inventory: Any) -> None:
        self.sub.ctx.bus.publish(events.INVENTORY_CHANGED, inventory)
        await self.sub.start()
        self.task = asyncio.ensure_future(self.sub.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
        await self.sub.stop()
        await self.sub.ctx.node.close()


def max_per_second(times: list[float]) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def inventories() -> tuple[Any, Any]:
    backend = SimGpuBackend("h100-80gb-hbm3", count=8, mig_layout="3g.40gb*2")
    changed = SimGpuBackend("h100-80gb-hbm3", count=8, mig_layout="1g.10gb*7")
    try:
        return await backend.inventory(), await changed.inventory()
    finally:
        await backend.close()
        await changed.close()


async def run_fleet() -> list[list[object]]:
    inventory, changed_inventory = await inventories()
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp, "tokens.csv")
        tokens.write_text(f'{TOKEN},system:serviceaccount:nodeagent:nodeagent,u1,"system:serviceaccounts"\n')
        server = TestApiServer(token_file=tokens, rbac=REPO / "container" / "kubernetes" / "rbac.yaml", history=5000)
        for i in range(AGENTS):
            server.add_node(node_name(i))
        await server.start()
        backend = SimGpuBackend("h100-80gb-hbm3", count=1)
        resync_s = max(10.0, Settings().labels.resync_s / RESYNC_SPEEDUP)
        creds = Credentials(server=server.url, token=lambda: TOKEN, namespace="nodeagent")
        agents = [
            Agent(i, KubeClient(creds, settings=FunnelSettings(timeout_s=10)), Path(tmp, "root"), backend, resync_s)
            for i in range(AGENTS)
        ]
        try:
            return await _measure(server, agents, inventory, changed_inventory, resync_s)
        finally:
            await asyncio.gather(*(a.close() for a in agents))
            await backend.close()
            await server.stop()


async def _measure(
    server: TestApiServer, agents: list[Agent], inventory: Any, changed: Any, resync_s: float
) -> list[list[object]]:
    rows: list[list[object]] = []
    t0 = time.monotonic()
    await asyncio.gather(*(a.start(inventory) for a in agents))

    def converged(a: Agent) -> bool:  # running, and the refresh after the start jitter has happened
        status = a.sub.status()
        return status.phase == Phase.RUNNING and status.details.get("first_api_writes_in_s") == 0

    while not all(converged(a) for a in agents):
        await asyncio.sleep(0.1)
    converged_s = time.monotonic() - t0
    writes = [t - t0 for t, _ in server.counters.write_times]
    startup_writes = len(writes)
    by_verb = {k: v for k, v in server.counters.by_verb.items() if k[0] in ("create", "update", "patch", "delete")}
    rows += [
        ["agents", AGENTS, ""],
        ["startup: all converged after", f"{converged_s:.1f} s", f"start jitter {START_JITTER_S:g} s"],
        ["startup: write requests", startup_writes, "bounded: about 3 per agent"],
        ["startup: writes per agent", f"{startup_writes / AGENTS:.2f}", ""],
        ["startup: write requests by verb", ", ".join(f"{v} {r} {n}" for (v, r), n in sorted(by_verb.items())), ""],
        ["startup: writes spread over", f"{max(writes) - min(writes):.1f} s", f">= {START_JITTER_S * 0.8:g} s"],
        ["startup: most writes in one second", max_per_second(writes), f"<= {3 * AGENTS / START_JITTER_S * 2:.0f}"],
    ]
    # converged window: writes, and requests by kind (watch/list from the Node watch, get from resyncs)
    writes_before = len(server.counters.write_times)
    verbs_before = dict(server.counters.by_verb)
    await asyncio.sleep(WINDOW_S)
    window_writes = len(server.counters.write_times) - writes_before
    delta = {k: n - verbs_before.get(k, 0) for k, n in server.counters.by_verb.items()}
    watches = sum(n for (verb, _), n in delta.items() if verb in ("watch", "list"))
    gets = sum(n for (verb, _), n in delta.items() if verb == "get")
    hour = 3600 / WINDOW_S / AGENTS
    watch_s = agents[0].sub.ctx.node.watch_timeout_s
    fast = (watches + gets) * hour
    default = watches * hour / WATCH_SPEEDUP + gets * hour / RESYNC_SPEEDUP
    rows += [
        [f"converged: writes per minute ({WINDOW_S:g} s window)", f"{window_writes * 60 / WINDOW_S:.1f}", "0"],
        [
            "converged: requests per agent per hour, shortened periods",
            f"{fast:.0f} ({watches * hour:.0f} watch/list, {gets * hour:.0f} get)",
            f"watch {watch_s}-{2 * watch_s} s, resync {resync_s:g} s",
        ],
        [
            "converged: requests per agent per hour, default periods",
            f"{default:.1f} ({watches * hour / WATCH_SPEEDUP:.1f} watch/list, {gets * hour / RESYNC_SPEEDUP:.1f} get)",
            f"watch {NodeGateway.watch_timeout_s}-{2 * NodeGateway.watch_timeout_s} s, resync "
            f"{Settings().labels.resync_s:g} s",
        ],
    ]
    # a MIG change on some agents
    changed_agents = agents[:CHANGED_AGENTS]
    started = time.monotonic()
    for a in changed_agents:
        a.sub.ctx.bus.publish(events.MIG_CHANGED, changed)
    latencies: dict[str, float] = {}
    while len(latencies) < len(changed_agents) and time.monotonic() - started < 10:
        for a in changed_agents:
            node = server.object("nodes", a.name)
            if a.name not in latencies and node and "nvidia.com/mig-1g.10gb.count" in node["metadata"]["labels"]:
                latencies[a.name] = time.monotonic() - started
        await asyncio.sleep(0.005)
    values = list(latencies.values())
    rows += [
        [
            f"MIG change published on the Node ({len(values)}/{CHANGED_AGENTS} agents)",
            f"p50 {percentile(values, 50) * 1000:.0f} ms, max {max(values, default=float('nan')) * 1000:.0f} ms",
            "<= 2 s",
        ]
    ]
    await asyncio.sleep(1.0)  # the MIG labels settle
    rows += await _health(server, agents[-HEALTH_AGENTS:])
    return rows


async def _xids(agent: Agent, period_s: float, stop: asyncio.Event) -> None:
    """XID 48 on GPU 0 every ``period_s`` (as the GPU-state owner publishes them from sweeps)."""
    while not stop.is_set():
        agent.sub.ctx.bus.publish(events.XID, XidEvent(0, "GPU-fleet", 48, time.time()))
        await asyncio.sleep(period_s)


async def _nvml_flaps(agent: Agent, period_s: float, stop: asyncio.Event) -> None:
    """NVML on GPU 0 hangs and answers again, alternately, every ``period_s``."""
    states = (GpuHealthState.DEGRADED, GpuHealthState.OK)
    flip = 0
    while not stop.is_set():
        agent.sub.ctx.bus.publish(events.GPU_HEALTH, {0: states[flip % 2]})
        flip += 1
        await asyncio.sleep(period_s)


async def _health(server: TestApiServer, agents: list[Agent]) -> list[list[object]]:
    """Node writes per hour once a fault pattern runs: a GPU with a steady fault (the same XID again and
    again), one whose XIDs come back just after each window, and one whose NVML flaps far faster than the
    publish interval. The first report of each pattern is left out (it is the one write a fault costs)."""
    health = [GpuHealthSubsystem(a.sub.ctx) for a in agents]
    stop = asyncio.Event()
    for h in health:
        await h.start()
    tasks = [asyncio.ensure_future(h.run(stop)) for h in health]
    defaults = Settings().gpuhealth
    window = defaults.xid_window_s / HEALTH_SPEEDUP
    interval = defaults.min_publish_interval_s / HEALTH_SPEEDUP
    third = len(agents) // 3
    patterns: list[tuple[str, list[Agent], Any, float]] = [
        ("steady fault", agents[:third], _xids, window / 5),
        ("XIDs back after each window", agents[third : 2 * third], _xids, window * 1.1),
        ("NVML flapping", agents[2 * third :], _nvml_flaps, interval / 20),
    ]
    bound = 2 * 3600 / defaults.min_publish_interval_s
    rows: list[list[object]] = []
    try:
        await asyncio.sleep(1.0)  # the agents' first (healthy) report
        for label, chosen, feed, period in patterns:
            feed_stop = asyncio.Event()
            feeders = [asyncio.ensure_future(feed(a, period, feed_stop)) for a in chosen]
            await asyncio.sleep(interval * 2)  # the fault's first report
            before = len(server.counters.write_times)
            await asyncio.sleep(HEALTH_WINDOW_S)
            writes = len(server.counters.write_times) - before
            feed_stop.set()
            await asyncio.gather(*feeders)
            per_hour = writes / len(chosen) * 3600 / HEALTH_WINDOW_S / HEALTH_SPEEDUP
            rows.append(
                [
                    f"health: Node writes per node per hour, {label} ({len(chosen)} of {AGENTS} nodes)",
                    f"{per_hour:.1f} ({writes} writes in {HEALTH_WINDOW_S:g} s at {HEALTH_SPEEDUP:g}x)",
                    f"<= {bound:.0f} (condition + event per {defaults.min_publish_interval_s:g} s)",
                ]
            )
            await asyncio.sleep(window * 1.5)  # recover before the next pattern
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return rows


def main() -> list[str]:
    logs.configure("json", "warning")  # 200 agents' info lines would drown the table
    rows = asyncio.run(run_fleet())
    return [
        table(
            f"Fleet: {AGENTS} simulated agents' labels against the test API server",
            ["what", "measured", "goal / note"],
            rows,
        )
    ]


if __name__ == "__main__":
    for text in main():
        print(text)
