"""Footprint of the whole agent: ``nodeagent run --simulate`` with 8 x 7 MIG instances, metrics every 10 s
(the default), no scrapes. RSS 60 s after it is ready (goal <= 60 MiB) and CPU over those 60 s
(goal <= 0.5 % of one core). A second, shorter run with ``--only metrics`` shows the metrics
subsystem's share (the agent's own loops included)."""

from __future__ import annotations

import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import Helper, cpu_seconds, rss_mib, table

WINDOW_S = 60.0
ALONE_WINDOW_S = 30.0
NODEAGENT = Path(sys.executable).parent / "nodeagent"


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def series_count(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(1 for line in text.splitlines() if line.startswith("DCGM_FI_DEV_FB_USED{"))


@dataclass
class Run:
    ready_s: float
    rss_ready: float
    rss: float
    cpu_pct: float
    cpu_s: float
    instances: int


def run_agent(window_s: float, only: str = "") -> Run | str:
    from tests.support import free_port

    port = free_port()
    root = tempfile.mkdtemp(prefix="nodeagent-footprint-")
    argv = [str(NODEAGENT), "run", "--simulate", "--root", root, "--listen", f"127.0.0.1:{port}"]
    if only:
        argv += ["--only", only]
    agent = Helper(
        argv, env={"NODEAGENT_SIMULATION__MIG_LAYOUT": "1g.10gb*7", "NODEAGENT_METRICS__INTERVAL_S": "10"}, quiet=True
    )
    try:
        started = time.monotonic()
        while not ready(port):
            if agent.proc.poll() is not None or time.monotonic() - started > 60:
                return f"the agent did not become ready (exit {agent.proc.poll()})"
            time.sleep(0.2)
        ready_s = time.monotonic() - started
        pid = agent.proc.pid
        rss_ready = rss_mib(pid)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(window_s)
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
        rss = rss_mib(pid)
        instances = series_count(port)  # after the window, so it does not count as a scrape in it
    finally:
        agent.stop()
    return Run(ready_s, rss_ready, rss, (cpu1 - cpu0) / (t1 - t0) * 100, cpu1 - cpu0, instances)


def main() -> list[str]:
    if not NODEAGENT.exists():
        return [f"\n## Footprint\n\nskipped: {NODEAGENT} not found"]
    whole = run_agent(WINDOW_S)
    if isinstance(whole, str):
        return [f"\n## Footprint\n\nfailed: {whole}"]
    alone = run_agent(ALONE_WINDOW_S, only="metrics")
    rows: list[list[object]] = [
        ["time to ready", f"{whole.ready_s:.1f} s", ""],
        ["MIG instances exported (FB_USED series)", whole.instances, "56"],
        ["RSS at ready", f"{whole.rss_ready:.1f} MiB", ""],
        [f"RSS {WINDOW_S:g} s after ready", f"{whole.rss:.1f} MiB", "<= 60 MiB"],
        [f"CPU over {WINDOW_S:g} s, 10 s interval, no scrapes", f"{whole.cpu_pct:.2f} % of one core", "<= 0.5 %"],
        ["CPU seconds in the window", f"{whole.cpu_s:.2f} s", ""],
    ]
    if isinstance(alone, Run):
        rows += [
            [f"`--only metrics`: CPU over {ALONE_WINDOW_S:g} s", f"{alone.cpu_pct:.2f} % of one core", "<= 0.5 %"],
            [f"`--only metrics`: RSS {ALONE_WINDOW_S:g} s after ready", f"{alone.rss:.1f} MiB", ""],
        ]
    return [
        table(
            "Footprint: nodeagent run --simulate, 8 x 7 MIG (whole agent, all subsystems)",
            ["what", "measured", "goal"],
            rows,
        )
    ]


if __name__ == "__main__":
    for t in main():
        print(t)
