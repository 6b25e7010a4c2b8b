"""The driver re-check's cost (issue 15, goal 3): a full gather (what every 30 s re-check did before)
against a probe that finds nothing changed (what it does now, the driver being ready), on sandbox nodes
of 8, 16 and 64 GPUs x 7 MIG; CPU per pass and per hour at ``driver.recheck_s`` = 30 s.

The sandbox's /proc holds one process; on a real host the full gather also reads the name of every
process (to find nvidia-persistenced), so the last row times that scan over this machine's real /proc
(read only). Passes: ``NODEAGENT_BENCH_DRIVER_PASSES`` (default 20).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import table

RECHECK_S = 30.0


def cpu() -> float:
    return time.process_time()  # every thread of this process: the gather runs on a worker thread


async def measure(count: int, passes: int) -> list[object]:
    from nodeagent.backends.hostfs import Root
    from nodeagent.backends.sim import sandbox
    from nodeagent.driver.changes import FULL_GATHER_EVERY_S
    from nodeagent.driver.subsystem import DriverSubsystem
    from nodeagent.testing import context, sim_gpus

    gpus = sim_gpus(count, mig_layout="1g.10gb*7")
    await gpus.open()
    inv = await gpus.inventory()
    await gpus.close()
    root = Root(tempfile.mkdtemp(prefix="nodeagent-bench-driver-"))
    sandbox.populate_sandbox(root, inv)
    drv = DriverSubsystem(context(root, inventory=inv))
    await drv.start()
    full, probe = [], []
    for _ in range(passes):
        t0 = cpu()
        await drv.reconcile()
        full.append(cpu() - t0)
        t0 = cpu()
        assert await drv.recheck() is None, "nothing changed: the probe must not gather"
        probe.append(cpu() - t0)
    f, p = statistics.median(full) * 1000, statistics.median(probe) * 1000
    per_hour = 3600 / RECHECK_S
    now_hour = p * per_hour + f * 3600 / FULL_GATHER_EVERY_S
    return [
        f"{count} x 7 MIG",
        len(drv._watched),
        f,
        p,
        f"{f * per_hour / 1000:.2f} s",
        f"{now_hour / 1000:.3f} s",
        f"{f * per_hour / now_hour:.0f}x",
    ]


def proc_scan_ms() -> str:
    from nodeagent.backends.hostfs import Root
    from nodeagent.driver.helpers import running

    root = Root("/")
    times = []
    for _ in range(5):
        t0 = cpu()
        procs = running(root)
        times.append(cpu() - t0)
    n = sum(len(p) for p in procs.values())
    return f"{statistics.median(times) * 1000:.2f} ms CPU for the {n} processes of this machine"


def main() -> list[str]:
    from nodeagent.logs import configure

    configure("console", "warning", stream=sys.stderr)
    passes = int(os.environ.get("NODEAGENT_BENCH_DRIVER_PASSES", "20"))
    rows = [asyncio.run(measure(count, passes)) for count in (8, 16, 64)]
    return [
        table(
            f"Driver re-check: CPU per pass and per hour at recheck_s={RECHECK_S:g} (median of {passes}); "
            f"before: a full gather every pass; now: a probe, a full gather hourly or on change",
            [
                "node",
                "inotify-watched files",
                "full gather ms CPU",
                "probe ms CPU",
                "before: CPU/hour",
                "now: CPU/hour",
                "saved",
            ],
            rows,
        ),
        f"\nA real host's full gather also scans /proc for helper daemons: {proc_scan_ms()}; the probe checks "
        "known pids only.",
    ]


if __name__ == "__main__":
    for t in main():
        print(t)
