"""The device plugin (issue 21) on the stand-in kubelet (``nodeagent.testing.kubelet_plugins``), in one process:
Allocate and GetPreferredAllocation p50/p99 at 8 GPUs and at 56 MIG devices (8 H100s, ``1g.10gb*7``, strategy
mixed), then the GetPreferredAllocation policy alone (``deviceplugin/preferred.py`` on the simulated HGX and
L4 topologies: several request sizes, with one GPU lost, exhaustive and greedy search), an injected XID to the
device's Unhealthy on the kubelet's ListAndWatch stream (goal: 100 ms), and a kubelet restart to the plugin
registered again (goal: 1 s). Then the VmRSS it adds to the whole agent (``bench_deviceplugin_memory``; goal:
+4 MiB).

``NODEAGENT_BENCH_DP_CALLS``: calls per RPC (default 200).
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bench_deviceplugin_memory
from bench._common import table


def _ms(values: list[float]) -> tuple[str, str]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered) * 1000:.2f}", f"{p99 * 1000:.2f}"


async def _rpcs(calls: int, mig: bool) -> tuple[str, list[float], list[float]]:
    from nodeagent.backends.gpu.sim.backend import SimGpuBackend
    from nodeagent.settings import Settings, replace
    from tests.deviceplugin.support import running, write_cdi_spec

    s = replace(Settings(), "labels", mig_strategy="mixed")
    sim = SimGpuBackend("h100-80gb-hbm3", 8, 0, mig_layout="1g.10gb*7" if mig else "")
    resource = "nvidia.com/mig-1g.10gb" if mig else "nvidia.com/gpu"
    want = 56 if mig else 8
    with tempfile.TemporaryDirectory(prefix="dp-bench-") as tmp:
        async with running(Path(tmp), s, sim=sim) as r:
            write_cdi_spec(r.ctx.root, await r.ctx.gpu_state.current())
            await r.kubelet.wait_for(lambda: r.kubelet.allocatable(resource) == want, timeout_s=30)
            ids = list(r.kubelet.plugins[resource].healthy())
            allocate, preferred = [], []
            for i in range(calls):
                t0 = time.perf_counter()
                await r.kubelet.allocate(resource, [ids[i % len(ids)]])
                allocate.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                await r.kubelet.preferred(resource, ids, [], 4)
                preferred.append(time.perf_counter() - t0)
    return f"{want} {'MIG devices' if mig else 'GPUs'}", allocate, preferred


async def _policy(calls: int) -> list[list[object]]:
    """The preferred-allocation policy alone, on the plans of simulated boards (no gRPC, no kubelet)."""
    from nodeagent.deviceplugin.preferred import preferred
    from nodeagent.deviceplugin.resources import plan
    from tests.deviceplugin.support import inventory

    boards = [
        ("8 H100 (NVSwitch, 18 links)", await inventory(8), "nvidia.com/gpu", (1, 2, 4, 8)),
        ("8 L4 (PCIe)", await inventory(8, "l4"), "nvidia.com/gpu", (2, 4)),
        ("56 MIG 1g.10gb on 8 H100", await inventory(8, mig_layout="1g.10gb*7"), "nvidia.com/mig-1g.10gb", (1, 4, 16)),
    ]
    rows: list[list[object]] = []
    for what, inv, name, sizes in boards:
        for lost in (False, True):
            advertised = plan(inv, strategy="mixed", unhealthy={3: "lost"} if lost else None)
            resource = advertised.resource(name)
            assert resource is not None
            available = tuple(d.id for d in resource.devices)
            for size in sizes:
                times = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    got = preferred(resource, available, (), size)
                    times.append(time.perf_counter() - t0)
                assert len(got) == min(size, sum(d.healthy for d in resource.devices))
                rows.append([what + (", GPU 3 lost" if lost else ""), size, *_ms(times)])
    return rows


async def _events() -> tuple[list[float], list[float]]:
    from nodeagent.backends.gpu.sim.backend import SimGpuBackend
    from nodeagent.settings import Settings
    from tests.deviceplugin.support import running

    xid, restart = [], []
    sim = SimGpuBackend("h100-80gb-hbm3", 8, 0)
    with tempfile.TemporaryDirectory(prefix="dp-bench-") as tmp:
        async with running(Path(tmp), Settings(), sim=sim) as r:
            gpu = "nvidia.com/gpu"
            await r.kubelet.wait_for(lambda: r.kubelet.allocatable(gpu) == 8, timeout_s=30)
            await r.ctx.gpu_state.started.wait()
            plugin = r.kubelet.plugins[gpu]
            for index in range(8):  # one XID per GPU: each stays unhealthy for the window (600 s)
                before = len(plugin.updates)
                t0 = time.perf_counter()
                sim.inject_xid(index, 79)
                await r.kubelet.wait_for(lambda want=7 - index: r.kubelet.allocatable(gpu) == want)
                xid.append(plugin.updates[before].at - t0)
            for _ in range(10):
                registered = len(r.kubelet.registrations)
                t0 = time.perf_counter()
                await r.kubelet.restart()
                await r.kubelet.wait_for(
                    lambda n=registered: len(r.kubelet.registrations) > n and gpu in r.kubelet.plugins
                )
                await r.kubelet.wait_for(lambda: bool(r.kubelet.plugins[gpu].updates))
                restart.append(time.perf_counter() - t0)
    return xid, restart


def main() -> list[str]:
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    calls = int(os.environ.get("NODEAGENT_BENCH_DP_CALLS", "200") or 200)
    rows: list[list[object]] = []
    for mig in (False, True):
        what, allocate, preferred = asyncio.run(_rpcs(calls, mig))
        rows.append([what, "Allocate", *_ms(allocate)])
        rows.append([what, "GetPreferredAllocation", *_ms(preferred)])
    xid, restart = asyncio.run(_events())
    rows.append(["8 GPUs", f"XID 79 to Unhealthy on ListAndWatch ({len(xid)} runs; goal 100 ms)", *_ms(xid)])
    rows.append(["8 GPUs", f"kubelet restart to registered and listed ({len(restart)} runs; goal 1 s)", *_ms(restart)])
    out = [table("Device plugin on the stand-in kubelet (ms)", ["devices", "what", "p50", "p99"], rows)]
    policy = asyncio.run(_policy(calls))
    out.append(table("GetPreferredAllocation policy alone (ms)", ["devices", "request size", "p50", "p99"], policy))
    out.extend(bench_deviceplugin_memory.tables())
    return out


if __name__ == "__main__":
    for text in main():
        print(text)
