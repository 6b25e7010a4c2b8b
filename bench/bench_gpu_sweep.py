"""Real GPU only: a sweep's cost against the sum of its NVML calls (goal <= 1.3x) and against running
`nvidia-smi -q -x` per scrape. Prints "skipped: no NVIDIA driver" where there is none."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import table

SWEEPS = 10


async def measure() -> list[list[object]]:
    from nodeagent.backends.gpu.nvml.backend import NvmlBackend
    from nodeagent.metrics.collector import split_tiers
    from nodeagent.metrics.fields import default_counters
    from nodeagent.model.gpu import SampleRequest

    fast, slow = split_tiers(default_counters())
    gpus = NvmlBackend()
    await gpus.open()
    rows: list[list[object]] = []
    try:
        inventory = await gpus.inventory()
        include_mig = any(g.mig_capable for g in inventory.gpus)
        for name, readings in (("fast tier", fast), ("fast + slow tiers", fast | slow)):
            request = SampleRequest(readings=frozenset(readings), include_mig=include_mig)
            for _ in range(2):
                await gpus.sample(request)  # warm up (GPM needs a previous sample)
            walls, sweeps, calls = [], [], []
            for _ in range(SWEEPS):
                t0 = time.perf_counter()
                sample = await gpus.sample(request)
                walls.append(time.perf_counter() - t0)
                sweeps.append(sample.duration_s)
                calls.append(sample.call_seconds)
            wall, sweep, call = (statistics.median(x) * 1000 for x in (walls, sweeps, calls))
            rows.append([name, len(inventory.gpus), call, sweep, wall, f"{wall / call:.2f}x" if call else "n/a"])
    finally:
        await gpus.close()
    return rows


def nvidia_smi_ms(smi: str) -> float:
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([smi, "-q", "-x"], capture_output=True, timeout=120, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> list[str]:
    from integration.metrics.gpu import driver_present, nvidia_smi

    if not driver_present():
        return ["\n## Real-GPU sweep cost\n\nskipped: no NVIDIA driver"]
    rows = asyncio.run(measure())
    smi = nvidia_smi()
    assert smi is not None
    smi_ms = nvidia_smi_ms(smi)
    for row in rows:
        row.append(f"{smi_ms:.0f} ms ({smi_ms / float(row[4]):.0f}x the sweep)")
    return [
        table(
            "Real-GPU sweep cost (median of 10; goal: sweep wall <= 1.3x the sum of NVML calls)",
            [
                "request",
                "GPUs",
                "sum of NVML calls ms",
                "sweep on worker ms",
                "sweep from loop ms",
                "wall / calls",
                "nvidia-smi -q -x",
            ],
            rows,
        )
    ]


if __name__ == "__main__":
    for t in main():
        print(t)
