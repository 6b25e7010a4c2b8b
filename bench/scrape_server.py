"""Bench server (a child process): the metrics subsystem over simulated GPUs, with two baselines on the
same event loop and over the same snapshot:

- ``/metrics``: ours (cached bytes per snapshot, per-scrape age tail, negotiation);
- ``/baseline``: (a) the leanest aiohttp handler: the same response bytes, picked from memory;
- ``/client_python``: (b) prometheus_client's own aiohttp handler, rendering the same series (and the
  same agent and process metrics) from the snapshot at every scrape, gzip per scrape when asked;
- ``/lag``: event-loop lag percentiles since the last call (a 1 ms sleep probe), as JSON.

Usage: scrape_server.py [--mig-layout 1g.10gb*7] [--count 8]; prints ``READY <port>``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from nodeagent import testing
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.metrics import exposition
from nodeagent.metrics.fields import Kind
from nodeagent.metrics.subsystem import MetricsSubsystem
from nodeagent.settings import load


class SnapshotFamilies(Collector):
    """The GPU series of the subsystem's current snapshot, as prometheus_client metric families."""

    def __init__(self, sub: MetricsSubsystem) -> None:
        self.sub = sub

    def collect(self) -> Iterator[Metric]:
        snap, layout = self.sub.snapshot, self.sub._current_layout(self.sub._inventory)  # type: ignore[arg-type]
        if snap is None:
            return
        for fam in layout.families:
            c = fam.counter
            names = [k for k, _ in layout.entities[0].pairs] if layout.entities else []
            family: GaugeMetricFamily | CounterMetricFamily
            if c.kind is Kind.COUNTER:
                family = CounterMetricFamily(c.name, c.help, labels=names)
            else:
                family = GaugeMetricFamily(c.name, c.help, labels=names)
            for entity in layout.entities:
                value = exposition.value_of(c, entity, snap)
                if value is not None:
                    family.add_metric([v for _, v in entity.pairs], value)
            if family.samples:
                yield family


class LagProbe:
    def __init__(self) -> None:
        self.samples: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.001)
            self.samples.append(loop.time() - t0 - 0.001)

    async def handle(self, request: web.Request) -> web.Response:
        got, self.samples = sorted(self.samples), []
        pick = lambda q: got[min(len(got) - 1, int(q * (len(got) - 1)))] if got else 0.0  # noqa: E731
        return web.json_response({"n": len(got), "p50": pick(0.5), "p99": pick(0.99), "max": got[-1] if got else 0})


async def steady_state(sub: MetricsSubsystem) -> None:
    """Wait until the slow tier has been read a second time and the series count held over a sweep:
    the first seconds of a process are not what a scraper sees for the rest of its life."""
    collector = sub._collector
    assert collector is not None
    slow_sweeps, last, count, stable = 0, None, -1, 0
    while slow_sweeps < 2 or stable < 1:
        await asyncio.sleep(0.05)
        snap = sub.snapshot
        if snap is None or snap is last:
            continue
        last = snap
        slow_sweeps += snap.slow
        exp = sub.exposition
        assert exp is not None
        now = exp.body(exposition.Format.TEXT, False, 0).count(b"\n")
        stable = stable + 1 if now == count else 0
        count = now


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="nodeagent-bench-"))
    settings = load(
        env={
            "NODEAGENT_METRICS__INTERVAL_S": str(args.interval),
            "NODEAGENT_METRICS__SLOW_INTERVAL_S": str(max(args.slow_interval or args.interval * 3, args.interval)),
            "NODEAGENT_METRICS__POD_ATTRIBUTION": "0",
        }
    )
    gpus = SimGpuBackend(count=args.count, mig_layout=args.mig_layout)
    await gpus.open()
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    ctx = testing.context(Root(tmp), settings, gpus=gpus, node_name="bench-node", registry=registry)
    sub = MetricsSubsystem(ctx)
    await sub.start()
    stop = asyncio.Event()
    owner_task = asyncio.create_task(ctx.gpu_state.run(stop))  # the agent's GPU-state task: it sweeps
    runner_task = asyncio.create_task(sub.run(stop))

    # (a): the same bytes from memory, looked up by the request's headers
    cache: dict[tuple[str, str], bytes] = {}
    cached_for: list[Any] = [None]

    async def baseline(request: web.Request) -> web.Response:
        current = sub.exposition
        assert current is not None
        if cached_for[0] is not current:
            cache.clear()
            cached_for[0] = current
        key = (request.headers.get("Accept", ""), request.headers.get("Accept-Encoding", ""))
        body = cache.get(key)
        fmt, gz = exposition.negotiate(*key)
        if body is None:
            body = cache[key] = current.body(fmt, gz, time.time())
        headers = {"Content-Type": exposition.CONTENT_TYPES[fmt]}
        if gz:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    # (b): prometheus_client rendering per scrape
    client_registry = CollectorRegistry()
    client_registry.register(SnapshotFamilies(sub))
    client_registry.register(sub.agent_metrics)
    ProcessCollector(registry=client_registry)
    PlatformCollector(registry=client_registry)

    probe = LagProbe()
    app = web.Application()
    for (method, path), handler in ctx.routes.items():
        app.router.add_route(method, path, handler)
    app.router.add_get("/baseline", baseline)
    app.router.add_get("/client_python", make_aiohttp_handler(client_registry))
    app.router.add_get("/lag", probe.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    if args.steady:
        await steady_state(sub)
    probe_task = asyncio.create_task(probe.run()) if args.lag else None
    print(f"READY {port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        if probe_task is not None:
            probe_task.cancel()
        stop.set()
        await runner_task
        await owner_task
        await sub.stop()
        await gpus.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--mig-layout", default="")
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--slow-interval", type=float, default=0.0, help="default: 3 x --interval")
    parser.add_argument("--steady", action="store_true", help="print READY only at steady state")
    parser.add_argument("--lag", action="store_true", help="run the 1 ms loop-lag probe")
    import contextlib
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        asyncio.run(main(parser.parse_args()))
