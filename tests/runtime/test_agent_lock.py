"""One agent per root: a second run / a concurrent apply or revert fails naming the holder's pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nodeagent.agent_lock import AgentLocked, acquire
from nodeagent.backends.hostfs import Root
from tests.support import free_port, wait_until

from .conftest import fixture

V16 = fixture("containerd-1.6.20-default.toml")


def test_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    root = Root(tmp_path)
    first = acquire(root, "/var/lib/nodeagent", "run")
    with pytest.raises(AgentLocked, match=rf"pid {os.getpid()} \(run\).*`apply` refused: wait for it"):
        acquire(root, "/var/lib/nodeagent", "apply")
    with pytest.raises(AgentLocked, match="stop the running agent first"):
        acquire(root, "/var/lib/nodeagent", "revert")
    first.release()
    acquire(root, "/var/lib/nodeagent", "apply").release()  # free again once released


def nodeagent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodeagent", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_apply_and_revert_refused_while_an_agent_runs_on_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_bytes(V16)
    settings = tmp_path / "nodeagent.toml"
    settings.write_text('version = 1\n[runtime]\ncontainerd_version = "1.6.20"\nrestart = "none"\n')
    common = ("--only", "runtime", "--root", str(root), "--config", str(settings))
    port = free_port()
    agent = subprocess.Popen(
        [sys.executable, "-m", "nodeagent", "run", *common, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lock_file = root / "var/lib/nodeagent/agent.lock"
    try:
        wait_until(lambda: lock_file.exists() and b"(run)" in lock_file.read_bytes(), timeout_s=60, what="lock")
        for command in ("apply", "revert", "run"):
            done = nodeagent(command, *common)
            assert done.returncode == 1, done.stderr
            assert f"pid {agent.pid} (run)" in done.stderr and "Traceback" not in done.stderr, done.stderr
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
    assert nodeagent("revert", *common).returncode == 0  # the agent is gone: the lock went with it
