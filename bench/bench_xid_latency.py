"""XID latency (issue 19, point 2): from an injected XID 79 to the XID event and to gpuhealth's verdict.

The device plugin must mark a GPU unhealthy within 100 ms of its XID, so XIDs are pushed by the backend (the
simulator's injection here, NVML's event wait on a real node) rather than picked up at the next sweep.

1. In one process: the simulator, the GPU-state owner running as the agent runs it, and the gpuhealth
   subsystem; ``POST /debug/sim/xid`` over HTTP to the simulator's own route, then the time until
   ``events.XID`` is on the bus, until gpuhealth's status says ``fail`` for that GPU, and until the node
   report (``events.NODE_GPU_HEALTH``) is published.
2. The whole agent (``nodeagent run --simulate``, runtime-only venv), ``--only gpuhealth`` and with every
   subsystem: ``POST /debug/sim/xid``, then ``GET /status`` every 2 ms until gpuhealth's verdict for that GPU
   is ``fail``. Injections are spread over the sweep interval (a random wait before each).

``NODEAGENT_BENCH_XID_ROUNDS``: injections per configuration (default 20 in process, 8 per agent).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import runtime_venv
from bench._common import Helper, table

GOAL_MS = 100.0


def _ms(values: list[float]) -> tuple[str, str, str]:
    if not values:
        return ("-", "-", "-")
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (f"{statistics.median(ordered) * 1000:.2f}", f"{p99 * 1000:.2f}", f"{ordered[-1] * 1000:.2f}")


async def _in_process(rounds: int) -> dict[str, list[float]]:
    from aiohttp import ClientSession, web

    from nodeagent import events, testing
    from nodeagent.backends.gpu.sim.backend import SimGpuBackend
    from nodeagent.backends.gpu.sim.debug import debug_routes
    from nodeagent.backends.hostfs import Root
    from nodeagent.gpuhealth.subsystem import GpuHealthSubsystem
    from nodeagent.settings import Settings, replace

    settings = replace(Settings(), "gpuhealth", min_publish_interval_s=0.0)
    out: dict[str, list[float]] = {"events.XID on the bus": [], "gpuhealth verdict and node report": []}
    with tempfile.TemporaryDirectory(prefix="nodeagent-xid-bench-") as tmp:
        for _ in range(rounds):
            sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
            ctx = testing.context(Root(Path(tmp)), settings, gpus=sim)
            health = GpuHealthSubsystem(ctx)
            app = web.Application()
            for method, path, handler in debug_routes(sim):
                app.router.add_route(method, path, handler)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            stop = asyncio.Event()
            await health.start()
            async with ctx.bus.subscribe(events.XID, events.NODE_GPU_HEALTH) as sub, ClientSession() as http:
                tasks = [asyncio.create_task(ctx.gpu_state.run(stop)), asyncio.create_task(health.run(stop))]
                await ctx.gpu_state.started.wait()
                await asyncio.sleep(random.uniform(0.0, 0.2))
                while sub.pending():
                    await sub.get()
                t0 = time.perf_counter()
                async with http.post(f"http://127.0.0.1:{port}/debug/sim/xid?gpu=1&xid=79") as resp:
                    assert resp.status == 200
                while True:  # the status verdict and the node report come from one evaluation
                    event = await asyncio.wait_for(sub.get(), 10)
                    now = time.perf_counter() - t0
                    if event.topic == events.XID:
                        out["events.XID on the bus"].append(now)
                    elif not event.payload.healthy:
                        assert health.status().details["gpus"]["1"]["verdict"] == "fail"
                        out["gpuhealth verdict and node report"].append(now)
                        break
                stop.set()
                await asyncio.gather(*tasks)
            await health.stop()
            await runner.cleanup()
            await sim.close()
    return out


def _status(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as resp:
        doc: dict[str, object] = json.load(resp)
    return doc


def _verdict(doc: dict[str, object], gpu: int) -> str:
    subs = doc.get("subsystems", {})
    assert isinstance(subs, dict)
    gpus = subs.get("gpuhealth", {}).get("details", {}).get("gpus", {})
    return str(gpus.get(str(gpu), {}).get("verdict", ""))


def _whole_agent(py: Path, only: list[str], rounds: int) -> tuple[list[float], str]:
    from tests.support import free_port

    root = Path(tempfile.mkdtemp(prefix="nodeagent-xid-bench-"))
    port = free_port()
    gpus = max(rounds, 1)
    simulate = f"h100-80gb-hbm3:{gpus}"
    subprocess_env = {"NODEAGENT_KUBE__MODE": "off"}
    plan = [str(py), "-m", "nodeagent", "plan", "--simulate", simulate, "--root", str(root), "--only", "labels"]
    Helper(plan, env=subprocess_env, quiet=True).proc.wait(60)
    argv = [str(py), "-m", "nodeagent", "run", "--simulate", simulate, "--root", str(root)]
    argv += ["--listen", f"127.0.0.1:{port}"]
    for name in only:
        argv += ["--only", name]
    agent = Helper(argv, env=subprocess_env, quiet=True)
    latencies: list[float] = []
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if _verdict(_status(port), 0) == "pass":
                    break
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if agent.proc.poll() is not None or time.monotonic() > deadline:
                return [], f"the agent did not report GPU health (exit {agent.proc.poll()})"
            time.sleep(0.1)
        for gpu in range(rounds):
            time.sleep(random.uniform(0.0, 2.0))
            req = urllib.request.Request(f"http://127.0.0.1:{port}/debug/sim/xid?gpu={gpu}&xid=79", method="POST")
            t0 = time.perf_counter()
            urllib.request.urlopen(req, timeout=5).close()
            while _verdict(_status(port), gpu) != "fail":
                if time.perf_counter() - t0 > 30:
                    return latencies, f"GPU {gpu}: no verdict within 30 s"
                time.sleep(0.002)
            latencies.append(time.perf_counter() - t0)
    finally:
        agent.stop()
    return latencies, ""


def main() -> list[str]:
    rounds = int(os.environ.get("NODEAGENT_BENCH_XID_ROUNDS", "0") or 0)
    inproc = asyncio.run(_in_process(rounds or 20))
    rows: list[list[object]] = [
        [f"in process, HTTP injection ({len(v)} runs)", what, *_ms(v)] for what, v in inproc.items()
    ]
    py, where = runtime_venv.python()
    for only, label in ((["gpuhealth"], "--only gpuhealth"), ([], "every subsystem")):
        latencies, problem = _whole_agent(py, only, rounds or 8)
        name = f"whole agent, {label} ({len(latencies)} runs)"
        rows.append([name, "/status gpuhealth verdict", *(_ms(latencies) if not problem else (problem, "", ""))])
    return [
        table(
            f"Injected XID 79 to its effect ({where}); goal: the verdict within {GOAL_MS:g} ms",
            ["setup", "until", "p50 ms", "p99 ms", "max ms"],
            rows,
        )
    ]


if __name__ == "__main__":
    for t in main():
        print(t)
