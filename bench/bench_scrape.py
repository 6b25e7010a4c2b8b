"""Scrape benchmark (issue 15, goal 1): /metrics at 8 x 7 MIG, steady state, 16 connections, plain and
gzip, against (a) an aiohttp handler serving the same response bytes from memory (``web.Response``,
the static-bytes server) and (b) prometheus_client rendering the same series per scrape.
Goals: >= 0.9x of (a) for plain and for gzip; p99 <= 5 ms at 16 connections.

The load client is wrk (Debian package ``wrk``) when present: a Python client saturates before the
server on this small machine. Without wrk the bundled asyncio client runs, and the table says so.
Page faults (/proc) and ``brk`` calls (``perf stat``) per request show what copying a large body costs.
Durations: ``NODEAGENT_BENCH_SCRAPE_S`` seconds per run (default 3), two interleaved rounds.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import runtime_venv
from bench._common import (
    PROMETHEUS_ACCEPT,
    REPO,
    WRK,
    Helper,
    SyscallCounter,
    WrkResult,
    cpu_seconds,
    env_seconds,
    load,
    table,
    wrk,
)

HANDLERS = (("ours", "/metrics"), ("(a) static bytes", "/baseline"), ("(b) prometheus_client", "/client_python"))
CONNECTIONS = 16
ROUNDS = 2
"""Handlers are measured in interleaved rounds (ours, a, b, ours, ...) and the median kept, so a burst of
load from elsewhere on the machine does not land on one handler only."""


def run_load(port: int, path: str, headers: dict[str, str], duration_s: float) -> WrkResult:
    if WRK is not None:
        return wrk(port, path, headers, connections=CONNECTIONS, duration_s=duration_s)
    r = asyncio.run(load(port, path, headers, concurrency=CONNECTIONS, duration_s=duration_s))
    return WrkResult(r.rate, r.p(50) * 1000, r.p(99) * 1000, r.requests, r.errors)


def bench(port: int, pid: int, duration_s: float) -> list[list[object]]:
    rows: list[list[object]] = []
    for gz in (False, True):
        headers = {"Accept": PROMETHEUS_ACCEPT, **({"Accept-Encoding": "gzip"} if gz else {})}
        for _name, path in HANDLERS:
            run_load(port, path, headers, 1)  # warm up
        results: dict[str, list[WrkResult]] = {name: [] for name, _ in HANDLERS}
        cpu: dict[str, float] = dict.fromkeys(results, 0.0)
        faults: dict[str, list[float]] = {name: [] for name, _ in HANDLERS}
        brks: dict[str, list[float]] = {name: [] for name, _ in HANDLERS}
        for _ in range(ROUNDS):
            for name, path in HANDLERS:
                before = cpu_seconds(pid)
                with SyscallCounter(pid) as counted:
                    r = run_load(port, path, headers, duration_s)
                cpu[name] += cpu_seconds(pid) - before
                results[name].append(r)
                faults[name].append(counted.faults / max(1, r.requests))
                brks[name].append(counted.brk / max(1, r.requests))
        rates = {name: statistics.median(r.rate for r in rs) for name, rs in results.items()}
        for name, _ in HANDLERS:
            rs = results[name]
            done = sum(r.requests for r in rs)
            ratio = f"{rates[name] / rates['(a) static bytes']:.2f}x (a)" if name != "(a) static bytes" else ""
            rows.append(
                [
                    "gzip" if gz else "plain",
                    name,
                    rates[name],
                    ratio,
                    max(r.p50_ms for r in rs),
                    max(r.p99_ms for r in rs),
                    cpu[name] / max(1, done) * 1e6,
                    statistics.median(faults[name]),
                    statistics.median(brks[name]),
                    sum(r.errors for r in rs),
                ]
            )
    return rows


def main() -> list[str]:
    duration_s = env_seconds("NODEAGENT_BENCH_SCRAPE_S", 3.0)
    py, where = runtime_venv.python()
    argv = [str(py), str(REPO / "bench/scrape_server.py"), "--count", "8", "--mig-layout", "1g.10gb*7"]
    server = Helper([*argv, "--interval", "5", "--slow-interval", "5", "--steady"])
    try:
        port = server.wait_ready()
        rows = bench(port, server.proc.pid, duration_s)
    finally:
        server.stop()
    client = f"wrk -t1 -c{CONNECTIONS}" if WRK else f"the asyncio client in bench/_common.py, {CONNECTIONS} connections"
    return [
        table(
            f"Scrape /metrics: 8 x 7 MIG, steady state, OpenMetrics; client: {client}; "
            f"{ROUNDS} rounds x {duration_s:g} s (NODEAGENT_BENCH_SCRAPE_S); goals: >= 0.9x (a), p99 <= 5 ms; {where}",
            [
                "encoding",
                "handler",
                "req/s",
                "vs static",
                "p50 ms (max)",
                "p99 ms (max)",
                "server CPU us/req",
                "page faults/req",
                "brk/req",
                "errors",
            ],
            rows,
        )
    ]


if __name__ == "__main__":
    for t in main():
        print(t)
