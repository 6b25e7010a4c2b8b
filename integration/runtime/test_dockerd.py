"""d) The runtime subsystem against a real dockerd (Debian's docker.io), in its own temporary root.

dockerd runs with its own data-root, exec-root, pid file and socket, and without iptables, a bridge or
IP forwarding, so the host's network is untouched. The agent reloads it the production way: SIGHUP to
the process behind the socket (restart = auto), and checks `GET /info` for the runtime.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from nodeagent.subsystem import Phase
from tests.support import wait_until

from .conftest import Daemon, agent, need_root_and, remove_tree, short_tmpdir, write_shim

pytestmark = [pytest.mark.integration, pytest.mark.root]


class Dockerd(Daemon):
    def docker(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "-H", f"unix://{self.sock}", *args], capture_output=True, text=True, timeout=30, check=False
        )

    def runtimes(self) -> dict[str, Any]:
        done = self.docker("info", "--format", "{{json .Runtimes}}")
        return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else {}


@pytest.fixture
def dockerd() -> Iterator[Dockerd]:
    need_root_and("dockerd", "docker", "containerd", "runc")
    base = short_tmpdir()
    d = Dockerd(base, shutil.which("dockerd") or "dockerd", "/etc/docker/daemon.json", "/run/docker.sock")
    d.config.parent.mkdir(parents=True)
    # the operator's own settings (they must come back unchanged), then what keeps dockerd inside base
    daemon_json = {
        "log-level": "warn",
        "log-opts": {"max-size": "10m", "max-file": "3"},
        "default-ulimits": {"nofile": {"Name": "nofile", "Hard": 65536, "Soft": 65536}},
        "data-root": f"{base}/var/lib/docker",
        "exec-root": f"{base}/run/docker",
        "pidfile": f"{base}/run/docker.pid",
        "hosts": [f"unix://{d.sock}"],
        "iptables": False,
        "ip-forward": False,
        "ip-masq": False,
        "bridge": "none",
    }
    d.config.write_text(json.dumps(daemon_json, indent=2) + "\n")
    d.write_restart_script(binary_args=f"--config-file {d.config}")
    d.start()
    try:
        wait_until(lambda: d.docker("version").returncode == 0, timeout_s=60, what=f"dockerd\n{d.log_text()[-2000:]}")
        yield d
    finally:
        d.stop()
        remove_tree(base)


async def test_d_dockerd_lists_the_runtime_and_keeps_daemon_json(dockerd: Dockerd) -> None:
    d = dockerd
    shim, _ = write_shim(d.base)
    original_text = d.config.read_text()
    assert not {"nvidia", "nvidia-cdi", "nvidia-legacy"} & set(d.runtimes())
    sub = agent(d, runtime_path=str(shim), restart_command=[])  # production path: SIGHUP to dockerd
    plan = sub.plan(await sub.observe())
    assert not plan.error, plan.error
    assert plan.steps[-1].action == "reload-runtime" and plan.steps[-1].disruption == "reload"
    pid = d.pid()
    result = await sub.apply(plan)
    assert result.changed == ("/etc/docker/daemon.json",)
    assert d.pid() == pid, "a reload, not a restart"
    assert sub.status().phase == Phase.RUNNING
    runtimes = d.runtimes()
    handlers = {"nvidia": str(shim), "nvidia-cdi": f"{shim}.cdi", "nvidia-legacy": f"{shim}.legacy"}
    for name, path in handlers.items():  # the three handlers of containerd and CRI-O, live in dockerd
        assert runtimes.get(name, {}).get("path") == path, runtimes
    after = json.loads(d.config.read_text())
    before = json.loads(original_text)
    assert after.pop("runtimes") == {name: {"path": path} for name, path in handlers.items()}
    assert after == before and list(after) == list(before)
    for line in original_text.splitlines():  # byte-identical apart from the added member
        assert line.rstrip(",") in {x.rstrip(",") for x in d.config.read_text().splitlines()}
    # idempotent, then revert to the original bytes with one more reload
    assert sub.plan(await sub.observe()).empty
    result = await sub.revert()
    assert d.config.read_text() == original_text
    # dockerd keeps runtimes on a reload that finds no `runtimes` key; the agent says so, and the
    # runtime is gone once dockerd restarts on the original file
    assert any("next restart" in m for m in result.messages)
    d.start()  # the restart script stops dockerd by pid and starts it again
    wait_until(lambda: d.docker("version").returncode == 0, timeout_s=60, what="dockerd back")
    assert not {"nvidia", "nvidia-cdi", "nvidia-legacy"} & set(d.runtimes())
