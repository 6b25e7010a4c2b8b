"""Size and blocking: huge files refused, FIFOs and hung reads time out, the loop stays free, and the
process still exits after SIGTERM while a read is stuck in a thread."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nodeagent.backends.hostfs import Root
from nodeagent.runtime import subsystem
from tests.support import free_port, wait_until

from .conftest import fixture

CONFIG = "/etc/containerd/config.toml"
V16 = fixture("containerd-1.6.20-default.toml")


async def test_a_config_over_the_size_cap_is_refused_by_name(node_factory: Any) -> None:
    big = V16 + b"# padding\n" * (subsystem.MAX_CONFIG_BYTES // 10 + 1)
    node = node_factory({CONFIG: big})
    before = node.snapshot()
    plan = node.sub.plan(await node.sub.observe())
    assert CONFIG in plan.error and "larger than the 4096 KiB" in plan.error, plan.error
    assert node.snapshot() == before


async def test_a_fifo_in_place_of_the_config_is_a_named_error_not_a_hang(node_factory: Any) -> None:
    node = node_factory({"/etc/containerd/.keep": b""})
    os.mkfifo(node.root.resolve(CONFIG))
    started = time.monotonic()
    plan = node.sub.plan(await node.sub.observe())
    assert time.monotonic() - started < 5
    assert CONFIG in plan.error and "not a regular file" in plan.error, plan.error


async def test_a_hung_read_times_out_with_a_named_error(node_factory: Any, monkeypatch: Any) -> None:
    node = node_factory({CONFIG: V16})
    release = threading.Event()
    real = Root.read_bytes

    def hung(self: Root, host_path: str, **kw: Any) -> bytes | None:
        if host_path == CONFIG and threading.current_thread() is not threading.main_thread():
            release.wait(30)  # a read stuck in the kernel (NFS gone, FUSE daemon hung)
        return real(self, host_path, **kw)

    monkeypatch.setattr(Root, "read_bytes", hung)
    monkeypatch.setattr(subsystem, "READ_TIMEOUT_S", 0.5)
    try:
        started = time.monotonic()
        plan = node.sub.plan(await node.sub.observe())
        assert time.monotonic() - started < 3
        assert "took longer than 0.5s" in plan.error and "hung filesystem" in plan.error, plan.error
    finally:
        release.set()


async def test_parsing_a_large_config_does_not_stall_the_loop(node_factory: Any) -> None:
    # a big plugin table of its own at the end (e.g. a long registry mirror list): about 1 MiB
    mirrors = ", ".join(f'"https://mirror-{i}.example.com"' for i in range(30000))
    runtimes = f'\n[plugins."example.mirrors"]\n  endpoints = [{mirrors}]\n'
    node = node_factory({CONFIG: V16 + runtimes.encode()}, containerd_version="1.6.20")
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        await node.sub.reconcile("start")
    finally:
        took = time.monotonic() - started
        done.set()
        await tick
    print(f"reconcile of a {len(V16) + len(runtimes)} byte config took {took:.2f}s; longest loop gap {max(gaps):.3f}s")
    assert b"runtimes.nvidia]" in node.read(CONFIG)
    assert max(gaps) < 2.0, max(gaps)  # parsed on the loop: 5.8 s; off it: ~0.2 s (more on a loaded machine)


STUCK_AGENT = """
import sys, threading
from nodeagent.backends.hostfs import Root
from nodeagent.runtime import subsystem
real = Root.read_bytes
def hung(self, host_path, **kw):
    if host_path == "/etc/containerd/config.toml":
        threading.Event().wait()  # never returns: a read stuck in the kernel
    return real(self, host_path, **kw)
Root.read_bytes = hung
subsystem.READ_TIMEOUT_S = 0.5
from nodeagent.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_ends_the_process_even_with_a_read_stuck_in_a_thread(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_bytes(V16)
    settings = tmp_path / "nodeagent.toml"
    settings.write_text('version = 1\n[runtime]\ncontainerd_version = "1.6.20"\n[agent]\nhard_exit_timeout_s = 60\n')
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-c", STUCK_AGENT, "run", "--only", "runtime", "--root", str(root)),
            *("--config", str(settings), "--listen", f"127.0.0.1:{port}", "--log-format", "json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    try:
        log = tmp_path / "log"
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, b"")), daemon=True)  # type: ignore[union-attr]
        reader.start()
        wait_until(lambda: any(b"took longer than 0.5s" in line for line in lines), timeout_s=30, what="stuck read")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)  # far below hard_exit_timeout_s: the exit guard, not the hard-exit timer
        log.write_bytes(b"".join(lines))
        assert rc == 0, b"".join(lines)[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
            pytest.fail("the process was still alive after SIGTERM")
