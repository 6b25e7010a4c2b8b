"""The DRA plugin (issue 22) on the stand-in kubelet (``nodeagent.testing.kubelet_dra``) and the test API server,
in one process: NodePrepareResources / NodeUnprepareResources p50/p99 for one claim of a whole GPU (8 H100s)
and of a MIG device (56, ``1g.10gb*7``), each a fresh claim read from the API server, its CDI spec and
checkpoint written; of a dynamic MIG placement (``dra.dynamic_mig``, 8 H100s with MIG enabled and no instance:
200 placement devices), its GPU instance created in the simulator (and destroyed by Unprepare), the inventory
refreshed and the node's CDI spec rewritten as the cdi subsystem does before the claim's spec; then the
ResourceSlice writes at steady state (republishing unchanged devices; goal 0)
and on a change (a MIG change; goal 1). Then the VmRSS and idle CPU it adds to the whole agent against the
device plugin's (``bench_dra_memory``; goal: at most +3 MiB beyond the device plugin).

``NODEAGENT_BENCH_DRA_CALLS``: claims per case (default 200).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bench_dra_memory
from bench._common import table


def _ms(values: list[float]) -> tuple[str, str]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered) * 1000:.2f}", f"{p99 * 1000:.2f}"


@contextlib.asynccontextmanager
async def _server(tmp: str) -> AsyncIterator[Any]:
    """The test API server with the project's RBAC and a Node ``node-a``."""
    from nodeagent.testing.apiserver import TestApiServer
    from tests.kube.kube_support import RBAC, TOKENS

    tokens = Path(tmp) / "tokens.csv"
    tokens.write_text(TOKENS)
    server = TestApiServer(token_file=tokens, rbac=RBAC)
    server.add_node("node-a")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _claims(r: Any, server: Any, names: list[str], calls: int) -> tuple[list[float], list[float]]:
    """``calls`` fresh claims, one device each (``names`` in turn), prepared then unprepared; their seconds."""
    from tests.dra.support import DRIVER, claim

    prepare, unprepare = [], []
    for i in range(calls):
        uid = claim(server, f"c{i}", [names[i % len(names)]])
        ref = [(uid, "default", f"c{i}")]
        t0 = time.perf_counter()
        answer = (await r.kubelet.prepare(DRIVER, ref))[uid]
        prepare.append(time.perf_counter() - t0)
        assert not answer.error, answer.error
        t0 = time.perf_counter()
        gone = (await r.kubelet.unprepare(DRIVER, ref))[uid]
        unprepare.append(time.perf_counter() - t0)
        assert not gone.error, gone.error
    return prepare, unprepare


async def _case(calls: int, mig: bool) -> tuple[list[float], list[float], int, int, int]:
    from nodeagent import events
    from nodeagent.backends.gpu.sim.backend import SimGpuBackend
    from tests.dra.support import running, until

    with tempfile.TemporaryDirectory(prefix="dra-bench-") as tmp:
        sim = SimGpuBackend("h100-80gb-hbm3", 8, 0, mig_layout="1g.10gb*7" if mig else "")
        try:
            async with _server(tmp) as server, running(Path(tmp) / "root", server, sim=sim) as r:
                await until(lambda: bool(r.plugin.published) and r.plugin.generation is not None, "published", 30)
                prepare, unprepare = await _claims(r, server, [d.name for d in r.plugin.published], calls)
                before = r.plugin.slice_writes
                for _ in range(20):
                    await r.plugin.publish()
                steady = r.plugin.slice_writes - before
                other = SimGpuBackend("h100-80gb-hbm3", 8, 0, mig_layout="" if mig else "1g.10gb*7")
                await other.open()
                r.ctx.bus.publish(events.MIG_CHANGED, await other.inventory())
                await other.close()
                await until(lambda: r.plugin.slice_writes > before + steady, "the change published", 30)
                changed = r.plugin.slice_writes - before - steady
                base = r.plugin.slice_writes
                for _ in range(5):  # a burst of XID 79 on one GPU: one health change
                    sim.inject_xid(3, 79)
                await until(lambda: any(d.taints for d in r.plugin.published), "the taint", 30)
                await until(lambda: r.plugin.slice_writes > base, "the taint published", 30)
                await asyncio.sleep(0.5)  # any further (wrong) write would land here
                health = r.plugin.slice_writes - base
        finally:
            await sim.close()
    return prepare, unprepare, steady, changed, health


async def _dynamic_case(calls: int) -> tuple[list[float], list[float], int, int]:
    from nodeagent.settings import replace
    from tests.dra.support import cdi_follows, mig_sim, running, settings, until

    with tempfile.TemporaryDirectory(prefix="dra-bench-") as tmp:
        sim = await mig_sim(8)
        s = replace(settings(), "dra", dynamic_mig=True)
        try:
            async with (
                _server(tmp) as server,
                running(Path(tmp) / "root", server, sim=sim, s=s) as r,
                cdi_follows(r.ctx),
            ):
                await until(lambda: bool(r.plugin.published) and r.plugin.generation is not None, "published", 30)
                names = [d.name for d in r.plugin.published if d.placement is not None]
                prepare, unprepare = await _claims(r, server, names, calls)
                created, destroyed = r.plugin.mig.created, r.plugin.mig.destroyed
        finally:
            await sim.close()
    return prepare, unprepare, created, destroyed


def main() -> list[str]:
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    calls = int(os.environ.get("NODEAGENT_BENCH_DRA_CALLS", "200") or 200)
    rows: list[list[object]] = []
    writes: list[list[object]] = []
    for mig in (False, True):
        what = "MIG device (of 56)" if mig else "whole GPU (of 8)"
        prepare, unprepare, steady, changed, health = asyncio.run(_case(calls, mig))
        rows.append([what, "NodePrepareResources", *_ms(prepare)])
        rows.append([what, "NodeUnprepareResources", *_ms(unprepare)])
        writes.append([what, "20 republishes, nothing changed (goal 0)", steady])
        writes.append([what, "a MIG change (goal 1)", changed])
        writes.append([what, "a health change: 5x XID 79 on one GPU (goal 1)", health])
    prepare, unprepare, created, destroyed = asyncio.run(_dynamic_case(calls))
    assert created == destroyed == calls, (created, destroyed)
    what = "dynamic MIG placement (of 200)"
    rows.append([what, "NodePrepareResources (creates the instance)", *_ms(prepare)])
    rows.append([what, "NodeUnprepareResources (destroys it)", *_ms(unprepare)])
    out = [
        table(
            f"DRA plugin on the stand-in kubelet, {calls} claims per case (ms)", ["claim", "call", "p50", "p99"], rows
        ),
        table("DRA plugin ResourceSlice writes", ["devices", "when", "writes"], writes),
    ]
    out.extend(bench_dra_memory.tables())
    return out


if __name__ == "__main__":
    for text in main():
        print(text)
