"""Scrape benchmark: /metrics req/s and latency, 8 simulated H100s and 8 x 7 MIG, plain and gzip,
against (a) an aiohttp handler serving the same bytes from memory and (b) prometheus_client rendering
the same series per scrape. Goals (issue 4): >= 0.7x of (a), >= 10x of (b), p99 <= 5 ms with 56 MIG.

Throughput: 8 keep-alive connections, closed loop, for a few seconds. Latency: one connection, closed
loop (service time without queueing). The load generator is Python on the same small machine, so (a)'s
rate is bounded by the client as much as by the server: the ratio to (a) is what matters.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import PROMETHEUS_ACCEPT, PYTHON, REPO, Helper, LoadResult, cpu_seconds, load, percentile, table

CONFIGS = (("8 x H100", ""), ("8 x 7 MIG (56)", "1g.10gb*7"))
HANDLERS = (("ours", "/metrics"), ("(a) bytes from memory", "/baseline"), ("(b) prometheus_client", "/client_python"))
ROUNDS = 3
"""Handlers are measured in interleaved rounds (a, b, ours, a, b, ...) and the median round is kept,
so a burst of load from elsewhere on the machine does not land on one handler only."""
THROUGHPUT_S = 1.2
LATENCY_S = 0.6


async def bench_config(port: int, pid: int) -> list[list[object]]:
    rows: list[list[object]] = []
    for gz in (False, True):
        headers = {"Accept": PROMETHEUS_ACCEPT}
        if gz:
            headers["Accept-Encoding"] = "gzip"
        for _name, path in HANDLERS:
            await load(port, path, headers, concurrency=2, duration_s=0.2)  # warm up
        thr: dict[str, list[LoadResult]] = {name: [] for name, _ in HANDLERS}
        lat: dict[str, list[float]] = {name: [] for name, _ in HANDLERS}
        cpu: dict[str, float] = dict.fromkeys(thr, 0.0)
        for _ in range(ROUNDS):
            for name, path in HANDLERS:
                before = cpu_seconds(pid)
                thr[name].append(await load(port, path, headers, concurrency=8, duration_s=THROUGHPUT_S))
                cpu[name] += cpu_seconds(pid) - before
                lat[name] += (await load(port, path, headers, concurrency=1, duration_s=LATENCY_S)).latencies_s
        rates = {name: statistics.median(r.rate for r in results) for name, results in thr.items()}
        for name, _ in HANDLERS:
            results = thr[name]
            size = sum(r.bytes for r in results) / max(1, sum(r.requests for r in results))
            loaded = [x for r in results for x in r.latencies_s]
            rows.append(
                [
                    "gzip" if gz else "plain",
                    name,
                    f"{size / 1024:.1f}",
                    rates[name],
                    cpu[name] / max(1, sum(r.requests for r in results)) * 1e6,
                    percentile(lat[name], 50) * 1000,
                    percentile(lat[name], 99) * 1000,
                    percentile(loaded, 99) * 1000,
                    "",
                ]
            )
        ours = rates["ours"]
        a, b = rates["(a) bytes from memory"], rates["(b) prometheus_client"]
        cpu_ratio = (cpu["(a) bytes from memory"] / max(1, sum(r.requests for r in thr["(a) bytes from memory"]))) / (
            cpu["ours"] / max(1, sum(r.requests for r in thr["ours"]))
        )
        rows[-3][-1] = f"{ours / a:.2f}x (a), {ours / b:.1f}x (b); CPU/req {cpu_ratio:.2f}x (a)"
    return rows


def main() -> list[str]:
    tables = []
    for title, layout in CONFIGS:
        argv = [PYTHON, str(REPO / "bench/scrape_server.py"), "--count", "8"]
        if layout:
            argv += ["--mig-layout", layout]
        server = Helper(argv)
        try:
            port = server.wait_ready()
            rows = asyncio.run(bench_config(port, server.proc.pid))
        finally:
            server.stop()
        tables.append(
            table(
                f"Scrape /metrics: {title} (Prometheus Accept header; OpenMetrics)",
                [
                    "encoding",
                    "handler",
                    "KiB/resp",
                    "req/s (c=8)",
                    "server CPU us/req",
                    "p50 ms (c=1)",
                    "p99 ms (c=1)",
                    "p99 ms (c=8)",
                    "ours vs",
                ],
                rows,
            )
        )
    return tables


if __name__ == "__main__":
    for t in main():
        print(t)
