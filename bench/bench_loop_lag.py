"""Loop lag while /metrics is scraped 50 times a second (goal: p99 <= 2 ms), 8 x 7 MIG.

The bench server runs the metrics subsystem (sweeps and renders on its interval) and a probe task that
sleeps 1 ms in a loop and records how late it wakes; a separate process scrapes at a fixed 50/s.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import PROMETHEUS_ACCEPT, PYTHON, REPO, Helper, paced, table

DURATION_S = 10.0
RATE = 50.0


def lag(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/lag", timeout=10) as resp:
        data: dict[str, float] = json.load(resp)
        return data


def main() -> list[str]:
    rows: list[list[object]] = []
    for interval in (10.0, 1.0):
        for gz in (True, False):
            server = Helper(
                [
                    PYTHON,
                    str(REPO / "bench/scrape_server.py"),
                    "--mig-layout",
                    "1g.10gb*7",
                    "--interval",
                    str(interval),
                    "--lag",
                ]
            )
            try:
                port = server.wait_ready()
                headers = {"Accept": PROMETHEUS_ACCEPT, **({"Accept-Encoding": "gzip"} if gz else {})}
                lag(port)  # reset after start-up
                result = asyncio.run(paced(port, "/metrics", headers, rate=RATE, duration_s=DURATION_S))
                probe = lag(port)
            finally:
                server.stop()
            rows.append(
                [
                    f"{interval:g} s",
                    "gzip" if gz else "plain",
                    result.requests,
                    result.errors,
                    result.p(50) * 1000,
                    result.p(99) * 1000,
                    int(probe["n"]),
                    probe["p50"] * 1000,
                    probe["p99"] * 1000,
                    probe["max"] * 1000,
                ]
            )
    return [
        table(
            f"Event-loop lag, 8 x 7 MIG, scraped {RATE:g}/s for {DURATION_S:g} s (OpenMetrics)",
            [
                "collection interval",
                "encoding",
                "scrapes",
                "errors",
                "scrape p50 ms",
                "scrape p99 ms",
                "lag samples",
                "lag p50 ms",
                "lag p99 ms",
                "lag max ms",
            ],
            rows,
        )
    ]


if __name__ == "__main__":
    for t in main():
        print(t)
