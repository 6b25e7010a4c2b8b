"""The whole agent as a user runs it: `nodeagent run --simulate` in a subprocess, HTTP, SIGTERM, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.agent import answers, get
from tests.support import free_port, wait_until

NODEAGENT = [sys.executable, "-m", "nodeagent"]
H100 = "NVIDIA H100 80GB HBM3"


@pytest.fixture(name="agent")
def _agent(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, float]]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NODE_NAME": "sim-node-1"}
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            *NODEAGENT,
            "run",
            "--simulate",
            "--root",
            str(tmp_path / "root"),
            "--listen",
            f"127.0.0.1:{port}",
            "--log-format",
            "json",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is not None or answers(f"{url}/readyz"), timeout_s=30, what="/readyz")
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        yield proc, url, time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_simulated_agent_is_ready_serves_status_and_stops_cleanly_on_sigterm(
    agent: tuple[subprocess.Popen[bytes], str, float], tmp_path: Path
) -> None:
    proc, url, ready_after = agent
    print(f"ready after {ready_after:.2f}s")
    assert ready_after < 15  # the goal is 3 s on a laptop; CI shares 2 cores with other work
    status, body = get(f"{url}/status")
    doc = json.loads(body)
    assert status == 200 and doc["ready"] is True and doc["simulate"] is True
    gpus = doc["inventory"]["gpus"]
    assert len(gpus) == 8
    assert {g["name"] for g in gpus} == {H100} and {g["memory_total_mib"] for g in gpus} == {81559}
    assert all(s["phase"] in ("running", "degraded") for s in doc["subsystems"].values()), doc["subsystems"]
    assert (tmp_path / "root" / "etc" / "containerd" / "config.toml").is_file()
    status, body = get(f"{url}/healthz")
    assert status == 200 and json.loads(body)["ok"] is True

    stopping = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    shutdown_s = time.monotonic() - stopping
    print(f"shutdown in {shutdown_s:.2f}s")
    assert shutdown_s < 10
    logs = proc.stdout.read().decode() if proc.stdout else ""
    events = [json.loads(line)["event"] for line in logs.splitlines() if line.startswith("{")]
    assert "agent_started" in events and events[-1] == "agent_stopped"


def test_status_simulate_lists_eight_h100s(tmp_path: Path) -> None:
    out = subprocess.run(
        [*NODEAGENT, "status", "--simulate", "--root", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if H100 in line]
    assert len(lines) == 8 and all("81559 MiB" in line for line in lines), out.stdout


def test_bad_settings_exit_2_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("version = 1\n[metrics]\nintervall_s = 5\n")
    out = subprocess.run(
        [*NODEAGENT, "plan", "--simulate", "--root", str(tmp_path / "r"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert str(config) in out.stderr and "metrics.intervall_s" in out.stderr and "interval_s" in out.stderr


def test_without_a_driver_and_without_simulate_it_says_so_and_exits_2(tmp_path: Path) -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("an NVIDIA driver is present here")
    out = subprocess.run(
        [*NODEAGENT, "status", "--root", str(tmp_path), "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2, out
    assert "--simulate" in out.stderr


def test_plan_simulate_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "r"
    first = subprocess.run(
        [*NODEAGENT, "plan", "--simulate", "--root", str(root)], capture_output=True, text=True, timeout=60, check=False
    )
    assert first.returncode in (0, 1), first.stderr
    snapshot = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    again = subprocess.run(
        [*NODEAGENT, "plan", "--simulate", "--root", str(root)], capture_output=True, text=True, timeout=60, check=False
    )
    assert again.stdout == first.stdout
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == snapshot
    for section in ("== driver ==", "== runtime ==", "== cdi ==", "== metrics =="):
        assert section in first.stdout


def test_runtime_only_commands_need_no_gpu_driver(tmp_path: Path) -> None:
    """Configuring the runtime before a driver exists is a real order of operations on new nodes."""
    if shutil.which("nvidia-smi"):
        pytest.skip("an NVIDIA driver is present here")
    root = tmp_path / "node"
    (root / "etc" / "containerd").mkdir(parents=True)
    default = Path(__file__).parents[1] / "nodeagent" / "backends" / "sim" / "data" / "containerd-1.6.20-default.toml"
    original = default.read_bytes()
    (root / "etc" / "containerd" / "config.toml").write_bytes(original)
    config = tmp_path / "settings.toml"
    config.write_text('version = 1\n[runtime]\nrestart = "none"\n')
    common = ["--only", "runtime", "--root", str(root), "--config", str(config)]
    planned = subprocess.run([*NODEAGENT, "plan", *common], capture_output=True, text=True, timeout=60, check=False)
    assert planned.returncode == 0, planned.stderr
    assert "add runtime 'nvidia'" in planned.stdout
    applied = subprocess.run([*NODEAGENT, "apply", *common], capture_output=True, text=True, timeout=60, check=False)
    assert applied.returncode == 0, applied.stderr
    assert b"runtimes.nvidia]" in (root / "etc" / "containerd" / "config.toml").read_bytes()
    reverted = subprocess.run([*NODEAGENT, "revert", *common], capture_output=True, text=True, timeout=60, check=False)
    assert reverted.returncode == 0, reverted.stderr
    assert (root / "etc" / "containerd" / "config.toml").read_bytes() == original
