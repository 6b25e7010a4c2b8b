"""Shared bench helpers: a bounded keep-alive HTTP load generator on loopback, percentiles, tables,
and starting a helper process that prints ``READY <port>`` when it listens."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    bytes: int = 0
    latencies_s: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies_s, q)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def _request(path: str, headers: Mapping[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, int]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status, length


async def load(
    port: int,
    path: str,
    headers: Mapping[str, str],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int = 200_000,
) -> LoadResult:
    """Closed-loop load: ``concurrency`` keep-alive connections, each sending its next request as soon
    as the last one is answered; bounded by time and by count."""
    request = _request(path, headers)
    result = LoadResult()
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        try:
            while time.perf_counter() < deadline and result.requests + result.errors < max_requests:
                t0 = time.perf_counter()
                status, n = await _one(reader, writer, request)
                result.latencies_s.append(time.perf_counter() - t0)
                if status == 200:
                    result.requests += 1
                    result.bytes += n
                else:
                    result.errors += 1
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    return result


async def paced(port: int, path: str, headers: Mapping[str, str], *, rate: float, duration_s: float) -> LoadResult:
    """Open-loop load at a fixed rate (one request every 1/rate s, on up to 4 connections)."""
    request = _request(path, headers)
    result = LoadResult()
    conns = [await asyncio.open_connection("127.0.0.1", port, limit=1 << 22) for _ in range(4)]
    free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)

    async def fire() -> None:
        reader, writer = await free.get()
        t0 = time.perf_counter()
        try:
            status, n = await _one(reader, writer, request)
        finally:
            free.put_nowait((reader, writer))
        result.latencies_s.append(time.perf_counter() - t0)
        result.requests += status == 200
        result.errors += status != 200
        result.bytes += n

    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for i in range(int(rate * duration_s)):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire()))
    await asyncio.gather(*tasks)
    result.elapsed_s = loop.time() - start
    for _, writer in conns:
        writer.close()
    return result


class Helper:
    """A helper process (a bench server or the agent) stopped by its pid."""

    def __init__(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path = REPO, quiet: bool = False
    ) -> None:
        self.proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.DEVNULL if quiet else subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )

    def wait_ready(self, timeout_s: float = 60.0) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError(f"helper exited with {self.proc.wait()}")
            if line.startswith("READY "):
                return int(line.split()[1])
        raise RuntimeError("helper did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    out = [f"\n## {title}", ""]
    for n, row in enumerate(cells):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def env_seconds(name: str, default: float) -> float:
    """A duration from the environment (``NODEAGENT_BENCH_*_S``), so long runs are opt-in."""
    value = os.environ.get(name, "")
    try:
        return float(value) if value else default
    except ValueError:
        raise SystemExit(f"{name}={value!r}: expected seconds") from None


WRK = shutil.which("wrk")


@dataclass
class WrkResult:
    rate: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def wrk(port: int, path: str, headers: Mapping[str, str], *, connections: int, duration_s: float) -> WrkResult:
    """wrk (one thread: the machine is small) with ``connections`` keep-alive connections."""
    assert WRK is not None
    argv = [WRK, "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--latency", "--timeout", "5s"]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    out = subprocess.run([*argv, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(int(x) for x in errs.groups()) if errs else 0)
    return WrkResult(rate, _wrk_pct(out, "50%"), _wrk_pct(out, "99%"), done, errors)


def _wrk_pct(out: str, label: str) -> float:
    m = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if m is None:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]


def minor_faults(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


class SyscallCounter:
    """``brk`` calls and page faults of a process over a window, through ``perf stat`` (root, tracepoints);
    ``available`` is False where perf cannot attach (then only /proc's page-fault count is used)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.proc: subprocess.Popen[str] | None = None
        self.faults0 = 0
        self.brk: float = float("nan")
        self.faults = 0

    def __enter__(self) -> SyscallCounter:
        self.faults0 = minor_faults(self.pid)
        perf = shutil.which("perf")
        if perf:
            self.proc = subprocess.Popen(
                [perf, "stat", "-x,", "-e", "syscalls:sys_enter_brk", "-p", str(self.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(0.2)  # let it attach
        return self

    def __exit__(self, *exc: object) -> None:
        self.faults = minor_faults(self.pid) - self.faults0
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=10)
        for line in err.splitlines():
            head = line.split(",")[0]
            if "sys_enter_brk" in line and head.strip().isdigit():
                self.brk = int(head)


def cpu_ns(pid: int) -> int:
    """CPU time of every live thread of ``pid`` in ns (schedstat: finer than the 10 ms ticks of stat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def settle_idle_main(doc: str, tables: Callable[[float, float | None], list[str]]) -> int:
    """The command line of a memory/idle-CPU bench: ``--settle-s`` before measuring, ``--idle-s`` to measure."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--idle-s", type=float, default=None)
    args = parser.parse_args()
    for text in tables(args.settle_s, args.idle_s):
        print(text)
    return 0
