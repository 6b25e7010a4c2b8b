"""The image, built with buildah (conftest.py), runs in a real containerd the way the DaemonSet runs it.

The container gets what the rendered kubeadm DaemonSet gives it: the image's ENTRYPOINT with the
manifest's args (Kubernetes keeps ENTRYPOINT and replaces CMD with args; `ctr run` replaces both, so the
test joins them itself), NODE_NAME and the manifest's literal env, each hostPath volume as a bind mount
from a simulated node's root (the `/` volume at /host, rslave for HostToContainer), privileged, and a
read-only root filesystem. The only changes, so that the test can reach it and no GPU is needed:
`--simulate`, the host network with `--listen 127.0.0.1:<free port>` instead of a pod IP (there is no CNI
here). hostPID becomes the test process's own PID namespace (the host's as far as the test can reach:
/proc/1/ns is not ours to join on every CI machine).

Measured and printed (run with -s): image size, build time, time to ready, the container's memory
(cgroup usage and the process's peak RSS) and CPU at rest; the DaemonSet's resources come from these.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.agent import answers, get
from integration.runtime.conftest import Containerd, remove_tree, short_tmpdir
from nodeagent.backends.hostfs import Root
from nodeagent.settings import Settings
from tests.support import free_port, wait_until

from .conftest import BuiltImage
from .kube import OVERLAY_DIR, agent_container, find, literal_env, memory_bytes, render

pytestmark = [pytest.mark.integration, pytest.mark.root]

NODE_NAME = "sim-gpu-node-3"
# A slim Debian base, Python and the agent's wheels: measured 127 MB unpacked, 45 MB compressed.
MAX_UNPACKED_MB = 140
CPU_WINDOW_S = Settings().metrics.interval_s + 1


def ctr_run_argv(
    image: BuiltImage, docs: list[dict[str, Any]], node: Path, port: int, log: Path, name: str
) -> list[str]:
    """`ctr run` arguments equivalent to the DaemonSet's pod, with the node's root at ``node``."""
    pod = find(docs, "DaemonSet")["spec"]["template"]["spec"]
    container = agent_container(docs)
    volumes = {v["name"]: v for v in pod["volumes"]}
    argv = ["run", "-d", "--net-host", f"--log-uri=file://{log}"]
    if container["securityContext"].get("privileged"):
        argv.append("--privileged")
    if pod.get("hostPID"):
        argv += ["--with-ns", f"pid:/proc/{os.getpid()}/ns/pid"]
    if container["securityContext"].get("readOnlyRootFilesystem"):
        argv.append("--read-only")
    for mount in container["volumeMounts"]:
        host_path = volumes[mount["name"]]["hostPath"]["path"]
        source = node / host_path.lstrip("/")
        source.mkdir(parents=True, exist_ok=True)
        options = ["rbind", "ro" if mount.get("readOnly") else "rw"]
        if mount.get("mountPropagation") == "HostToContainer":
            options.append("rslave")
        argv += ["--mount", f"type=bind,src={source},dst={mount['mountPath']},options={':'.join(options)}"]
    for key, value in {"NODE_NAME": NODE_NAME, **literal_env(container)}.items():
        argv += ["--env", f"{key}={value}"]
    process = [*image.entrypoint, *container["args"], "--simulate", "--listen", f"127.0.0.1:{port}"]
    return [*argv, image.tag, name, *process]


def task_pid_and_status(d: Containerd, name: str) -> tuple[int, str]:
    for line in d.ctr("tasks", "ls").stdout.splitlines()[1:]:
        cols = line.split()
        if cols and cols[0] == name:
            return int(cols[1]), cols[2]
    return 0, "MISSING"


def cgroup_figures(d: Containerd, name: str) -> tuple[int, float]:
    """Memory usage (bytes, as the kubelet's cgroup view counts it) and CPU time (s) of the task's cgroup."""
    doc = json.loads(d.ctr("tasks", "metrics", "--format", "json", name).stdout)
    data = doc.get("Data", doc)
    memory = data["memory"]
    usage = memory["usage"]["usage"] if isinstance(memory.get("usage"), dict) else memory["usage"]
    cpu = data["cpu"]
    cpu_ns = cpu["usage"]["total"] if isinstance(cpu.get("usage"), dict) else cpu["usage_usec"] * 1000
    return int(usage), cpu_ns / 1e9


def proc_status_kib(pid: int, field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    assert match, field
    return int(match.group(1))


def test_image_runs_in_containerd_as_the_daemonset_would(image: BuiltImage, containerd_factory: Any) -> None:
    d: Containerd = containerd_factory()
    imported = d.ctr("images", "import", str(image.archive), timeout=180)
    assert image.tag in imported.stdout, imported.stdout + imported.stderr
    docs = render(OVERLAY_DIR / "kubeadm")
    memory_limit = memory_bytes(agent_container(docs)["resources"]["limits"]["memory"])
    grace_s = find(docs, "DaemonSet")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    work = short_tmpdir()
    node, log, port, name = work / "node", work / "container.log", free_port(), f"nodeagent-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    d.ctr(*ctr_run_argv(image, docs, node, port, log, name), timeout=120)
    try:

        def logs() -> str:
            return log.read_text(errors="replace")[-4000:] if log.exists() else ""

        wait_until(
            lambda: answers(f"{url}/readyz") or task_pid_and_status(d, name)[1] != "RUNNING",
            timeout_s=90,
            what="the container's /readyz",
        )
        pid, status = task_pid_and_status(d, name)
        assert status == "RUNNING", logs()
        ready_s = time.monotonic() - started
        nspid = re.search(r"^NSpid:\s+(.*)$", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
        assert nspid and nspid.group(1).split() == [str(pid)], "the agent is not in the host PID namespace"

        # /metrics: DCGM-style series for the simulated GPUs, labelled with the node's name
        code, body = get(f"{url}/metrics")
        assert code == 200, body
        text = body.decode()
        assert "DCGM_FI_DEV_GPU_TEMP{" in text and NODE_NAME in text, text[:2000]

        # what the agent wrote into the node's root through /host
        root = Root(node)
        config = root.resolve("/etc/containerd/config.toml").read_text()
        assert "runtimes.nvidia]" in config and "runtimes.runc]" in config, config[-2000:]
        spec = yaml.safe_load(root.resolve("/var/run/cdi/nvidia.yaml").read_text())
        assert spec["kind"] == "nvidia.com/gpu"
        assert {"all", "0", "7"} <= {dev["name"] for dev in spec["devices"]}, [dev["name"] for dev in spec["devices"]]

        # figures: memory after a few scrapes; CPU over one metrics collection interval plus a second
        for _ in range(5):
            get(f"{url}/metrics")
        cgroup_bytes, cpu_before = cgroup_figures(d, name)
        time.sleep(CPU_WINDOW_S)  # an interval to measure over, not a wait for an event
        _, cpu_after = cgroup_figures(d, name)
        rss_kib, peak_kib = proc_status_kib(pid, "VmRSS"), proc_status_kib(pid, "VmHWM")
        millicores = (cpu_after - cpu_before) / CPU_WINDOW_S * 1000
        print(
            "\n| image unpacked | image compressed | build | ready | cgroup memory | RSS | peak RSS | CPU |\n"
            f"| {image.unpacked_bytes / 1e6:.0f} MB | {image.compressed_bytes / 1e6:.0f} MB | {image.build_s:.0f} s "
            f"| {ready_s:.1f} s | {cgroup_bytes / 2**20:.1f} MiB | {rss_kib / 1024:.1f} MiB "
            f"| {peak_kib / 1024:.1f} MiB | {millicores:.1f} m |"
        )
        assert image.unpacked_bytes / 1e6 <= MAX_UNPACKED_MB
        assert peak_kib * 1024 < memory_limit / 2, "the DaemonSet's memory limit leaves too little headroom"

        # SIGTERM, as the kubelet stops a pod: a clean exit within the grace period
        d.ctr("tasks", "kill", "--signal", "SIGTERM", name)
        wait_until(lambda: task_pid_and_status(d, name)[1] == "STOPPED", timeout_s=grace_s, what="exit on SIGTERM")
        events = [json.loads(line)["event"] for line in logs().splitlines() if line.startswith("{")]
        assert events and events[-1] == "agent_stopped", logs()
    finally:
        d.ctr("tasks", "kill", "--signal", "SIGKILL", name, check=False)
        d.ctr("tasks", "delete", "--force", name, check=False)
        d.ctr("containers", "delete", name, check=False)
        remove_tree(work)
