"""The seed scenario, end to end on the real kubelet: a pod with `runtimeClassName: nvidia` fails with
containerd's own `no runtime for "nvidia" is configured`; `nodeagent apply --only runtime` on the
cluster's containerd config (the cluster's directory is the node's Root) adds the handler and restarts
containerd; the same pod then runs, through the handler's binary.

No NVIDIA container toolkit is installed here, so the handler's binary is a wrapper that records each
call and execs runc (integration/runtime's write_shim, as the podman test wraps its runtime): the test
proves the kubelet -> containerd -> handler path the agent configures, not the toolkit itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from integration.cluster.api import ApiError
from integration.cluster.cluster import Cluster
from integration.cluster.support import delete_pod, events_for, host_network_pod, wait_pod
from integration.runtime.conftest import write_shim
from tests.support import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.cluster]

RUNTIME_CLASSES = "/apis/node.k8s.io/v1/runtimeclasses"


def nodeagent_runtime(cluster: Cluster, command: str, shim: Path) -> subprocess.CompletedProcess[str]:
    """`nodeagent COMMAND --only runtime` on the cluster's root, restarting its containerd by pid."""
    d = cluster.containerd
    assert d is not None
    values = {
        "socket": d.socket_host,
        "restart_command": [str(d.restart_script)],
        "log_path": d.log_host,
        "health_timeout_s": 30.0,
        "runtime_path": str(shim),
    }
    config = cluster.base / "nodeagent.toml"
    config.write_text("version = 1\n[runtime]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    argv = [sys.executable, "-m", "nodeagent", command, "--only", "runtime", "--root", str(cluster.base)]
    return subprocess.run([*argv, "--config", str(config)], capture_output=True, text=True, timeout=180, check=False)


def sandbox_failures(cluster: Cluster, pod: str) -> list[str]:
    return [e["message"] for e in events_for(cluster.admin, "default", pod) if e["reason"] == "FailedCreatePodSandBox"]


def test_a_nvidia_pod_fails_then_runs_after_the_agent_configures_containerd(cluster: Cluster) -> None:
    d = cluster.containerd
    assert d is not None
    shim, calls = write_shim(cluster.base)
    runtime_class: dict[str, Any] = {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": "nvidia"},
        "handler": "nvidia",
    }
    try:
        cluster.admin.post(RUNTIME_CLASSES, runtime_class)
    except ApiError as err:
        if err.status != 409:
            raise
    config_before = d.config.read_bytes()
    cluster.admin.post("/api/v1/namespaces/default/pods", host_network_pod("seed", runtime_class="nvidia"))
    try:
        wait_until(lambda: bool(sandbox_failures(cluster, "seed")), timeout_s=60, what="FailedCreatePodSandBox")
        assert any('no runtime for "nvidia" is configured' in m for m in sandbox_failures(cluster, "seed")), (
            sandbox_failures(cluster, "seed")
        )
        assert not calls.exists()

        old_pid = d.pid()
        applied = nodeagent_runtime(cluster, "apply", shim)
        assert applied.returncode == 0, applied.stderr
        assert "runtime: changed /etc/containerd/config.toml; restarted" in applied.stdout, applied.stdout
        assert d.pid() != old_pid
        d.wait_cri_ok()

        # The kubelet retries the same pod's sandbox on its own (with its back-off), now through the handler.
        doc = wait_pod(cluster, "seed", "Running", lambda p: p["status"].get("phase") == "Running", timeout_s=180)
        assert doc["spec"]["runtimeClassName"] == "nvidia"
        recorded = calls.read_text()
        assert "create" in recorded and "start" in recorded, recorded
    finally:
        delete_pod(cluster, "seed")
        reverted = nodeagent_runtime(cluster, "revert", shim)
        cluster.admin.delete(f"{RUNTIME_CLASSES}/nvidia")
    assert reverted.returncode == 0, reverted.stderr
    assert d.config.read_bytes() == config_before
    d.wait_cri_ok()
