"""Planning MIG for a whole simulated 8-GPU H100 node, for every config of the generated file, from three
starting layouts (MIG off, all-balanced, all-1g.10gb: seven instances, the widest keep search).
Goal: under 50 ms per config for the whole node (config matching, validation, exact placement search)."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import table

RUNS = 20
GOAL_MS = 50.0


async def _layouts() -> dict[str, object]:
    from nodeagent.backends.gpu.sim.backend import SimGpuBackend
    from nodeagent.backends.hostfs import Root
    from nodeagent.mig import service
    from nodeagent.mig.config import parse_text
    from nodeagent.mig.generate import generate, to_text
    from nodeagent.mig.observe import mig_layouts

    sim = SimGpuBackend("h100-80gb-hbm3", 8, 0)
    inventory = await sim.inventory()
    generated = parse_text(to_text(generate([s.gpu for s in mig_layouts(inventory)])), source="generated")
    layouts: dict[str, object] = {"MIG off": inventory}
    for name in ("all-balanced", "all-1g.10gb"):
        await service.apply_config(generated.select(name), sim, root=Root("/nonexistent"), inventory=inventory)
        inventory = await sim.inventory()
        layouts[name] = inventory
    await sim.close()
    return {"generated": generated, **layouts}


def measure() -> tuple[list[list[object]], float]:
    from nodeagent.mig.service import plan_or_raise

    data = asyncio.run(_layouts())
    generated = data.pop("generated")
    rows: list[list[object]] = []
    worst = 0.0
    for start, inventory in data.items():
        for name in generated.configs:  # type: ignore[attr-defined]
            config = generated.select(name)  # type: ignore[attr-defined]
            times = []
            for _ in range(RUNS):
                t0 = time.perf_counter()
                plan = plan_or_raise(config, inventory)  # type: ignore[arg-type]
                times.append((time.perf_counter() - t0) * 1000)
            kept = sum(len(g.kept) for g in plan.gpus if g.steps)
            med, top = statistics.median(times), max(times)
            worst = max(worst, top)
            rows.append([start, name, len(plan.steps), kept, med, top])
    return rows, worst


def main() -> list[str]:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rows, worst = measure()
    verdict = "met" if worst < GOAL_MS else "MISSED"
    return [
        table(
            f"MIG planning, 8 x H100, every generated config (median/max of {RUNS}; goal < {GOAL_MS:.0f} ms: {verdict},"
            f" worst {worst:.2f} ms)",
            ["starting layout", "config", "steps", "kept (changing GPUs)", "median ms", "max ms"],
            rows,
        )
    ]


if __name__ == "__main__":
    for text in main():
        print(text)
