"""Scaling table (issue 15, goal 6): 1, 8 and 16 simulated H100s, each whole and with 7 MIG instances,
at steady state (both sampling tiers read twice and the series count settled), in the runtime-only venv.

Per configuration: series and bytes of a plain scrape (and gzip bytes), collection CPU per cycle
(process CPU over two idle cycles at a 2 s interval, divided by the cycles: sweep, render, the loop),
the idle CPU that makes at the default 10 s interval, scrape p99 at 16 connections plain and gzip, and
RSS after the scrapes. Load client: wrk when present. ``NODEAGENT_BENCH_SCALING_S``: seconds per load
run (default 2).
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import runtime_venv
from bench._common import (
    PROMETHEUS_ACCEPT,
    REPO,
    WRK,
    Helper,
    WrkResult,
    cpu_ns,
    env_seconds,
    load,
    rss_mib,
    table,
    wrk,
)

CONFIGS = ((1, ""), (1, "1g.10gb*7"), (8, ""), (8, "1g.10gb*7"), (16, ""), (16, "1g.10gb*7"))
INTERVAL_S = 2.0
IDLE_CYCLES = 2
CONNECTIONS = 16


def fetch(port: int, gz: bool) -> bytes:
    headers = {"Accept": "text/plain", **({"Accept-Encoding": "gzip"} if gz else {})}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        data: bytes = resp.read()
        return data


def scrape(port: int, gz: bool, duration_s: float) -> WrkResult:
    headers = {"Accept": PROMETHEUS_ACCEPT, **({"Accept-Encoding": "gzip"} if gz else {})}
    if WRK is not None:
        return wrk(port, "/metrics", headers, connections=CONNECTIONS, duration_s=duration_s)
    r = asyncio.run(load(port, "/metrics", headers, concurrency=CONNECTIONS, duration_s=duration_s))
    return WrkResult(r.rate, r.p(50) * 1000, r.p(99) * 1000, r.requests, r.errors)


def measure(py: Path, count: int, layout: str, duration_s: float) -> list[object]:
    argv = [str(py), str(REPO / "bench/scrape_server.py"), "--count", str(count), "--interval", str(INTERVAL_S)]
    argv += ["--slow-interval", str(INTERVAL_S), "--steady"]
    if layout:
        argv += ["--mig-layout", layout]
    server = Helper(argv)
    try:
        port = server.wait_ready()
        pid = server.proc.pid
        body = fetch(port, gz=False)
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        zipped = len(fetch(port, gz=True))
        cpu0 = cpu_ns(pid)
        time.sleep(INTERVAL_S * IDLE_CYCLES)
        per_cycle = (cpu_ns(pid) - cpu0) / 1e9 / IDLE_CYCLES
        plain = scrape(port, False, duration_s)
        gzipped = scrape(port, True, duration_s)
        rss = rss_mib(pid)
    finally:
        server.stop()
    name = f"{count} x H100" + (" x 7 MIG" if layout else "")
    return [
        name,
        series,
        f"{len(body) / 1024:.0f} / {zipped / 1024:.1f}",
        per_cycle * 1000,
        per_cycle / 10.0 * 100,
        plain.p99_ms,
        gzipped.p99_ms,
        f"{plain.rate:.0f} / {gzipped.rate:.0f}",
        rss,
    ]


def main() -> list[str]:
    duration_s = env_seconds("NODEAGENT_BENCH_SCALING_S", 2.0)
    py, where = runtime_venv.python()
    rows = [measure(py, count, layout, duration_s) for count, layout in CONFIGS]
    client = f"wrk -c{CONNECTIONS}" if WRK else f"asyncio client, {CONNECTIONS} connections"
    return [
        table(
            f"Scaling, steady state (metrics subsystem + HTTP; {where}); client: {client}, {duration_s:g} s per run",
            [
                "GPUs",
                "series",
                "KiB plain / gzip",
                "collection CPU ms/cycle",
                "idle CPU % at 10 s",
                "p99 ms plain",
                "p99 ms gzip",
                "req/s plain / gzip",
                "RSS MiB",
            ],
            rows,
        )
    ]


if __name__ == "__main__":
    for t in main():
        print(t)
