"""The process around the runtime work: simulation never on the real root, honest exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import free_port, wait_until

from .conftest import fixture

V16 = fixture("containerd-1.6.20-default.toml")
AGENT = (sys.executable, "-m", "nodeagent")


def nodeagent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodeagent", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


# ------------------------------------------------------------------------------------------------ 14


@pytest.mark.parametrize("root", ["/", "//", "/./"])
def test_simulation_on_the_real_root_is_refused(root: str) -> None:
    done = nodeagent("status", "--simulate", "--root", root)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "simulation never runs on the real root" in done.stderr and "Traceback" not in done.stderr


def test_sandbox_setting_pointing_at_the_real_root_is_refused(tmp_path: Path) -> None:
    settings = tmp_path / "s.toml"
    settings.write_text('version = 1\n[simulation]\nenabled = true\nsandbox = "//"\n')
    done = nodeagent("status", "--config", str(settings))
    assert done.returncode == 2 and "simulation never runs on the real root" in done.stderr, done.stderr


def _gpu_count(done: subprocess.CompletedProcess[str]) -> int:
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    return len(doc["inventory"]["gpus"])


def test_bare_simulate_keeps_profile_and_count_from_settings_and_environment(tmp_path: Path) -> None:
    settings = tmp_path / "s.toml"
    settings.write_text("version = 1\n[simulation]\ncount = 2\n")
    common = ("status", "--json", "--only", "runtime", "--root", str(tmp_path / "sandbox"))
    assert _gpu_count(nodeagent(*common, "--simulate", "--config", str(settings))) == 2
    assert _gpu_count(nodeagent(*common, "--simulate", env={"NODEAGENT_SIMULATION__COUNT": "3"})) == 3
    assert _gpu_count(nodeagent(*common, "--simulate=h100-80gb-hbm3:4", "--config", str(settings))) == 4


# ------------------------------------------------------------------------------------------------ 15


def test_ctrl_c_during_apply_exits_130_and_says_what_was_not_done(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_bytes(V16)
    settings = tmp_path / "s.toml"
    settings.write_text(
        'version = 1\n[runtime]\ncontainerd_version = "1.6.20"\nrestart_command = ["sleep", "60"]\n'
        "health_timeout_s = 60.0\n"
    )
    proc = subprocess.Popen(
        [*AGENT, "apply", "--only", "runtime", "--root", str(root), "--config", str(settings), "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: b"nvidia" in (root / "etc/containerd/config.toml").read_bytes(), timeout_s=60, what="write")
    time.sleep(0.3)  # in the restart now (the restart command sleeps)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "interrupted: applied nothing; not applied: runtime" in err, err
    assert "Traceback" not in err


def test_a_second_sigterm_during_shutdown_keeps_exit_code_0(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_bytes(V16)
    settings = tmp_path / "s.toml"
    settings.write_text('version = 1\n[runtime]\ncontainerd_version = "1.6.20"\nrestart = "none"\n')
    port = free_port()
    proc = subprocess.Popen(
        [
            *AGENT,
            "run",
            "--only",
            "runtime",
            "--root",
            str(root),
            "--config",
            str(settings),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lock = root / "var/lib/nodeagent/agent.lock"
    wait_until(
        lambda: lock.exists() and b"nvidia" in (root / "etc/containerd/config.toml").read_bytes(),
        timeout_s=60,
        what="agent running",
    )
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(signal.SIGTERM)  # the first stops it; every later one lands during shutdown
        time.sleep(0.005)
    assert proc.wait(5) == 0
