"""The runtime subsystem against a real containerd 1.6 (Debian's package), each test in its own root.

a) CRI RunPodSandbox with handler "nvidia" fails with containerd's own error before apply, and runs
   through the configured runtime binary after it;
b) a k0s-style drop-in directory: after apply containerd still has runc and its CRI plugin loads;
c) a change containerd rejects at start is rolled back and containerd serves again;
e) drift: the file is rewritten behind a running subsystem and the runtime entry is back within 2 s.

Test a) runs the real `nodeagent apply` / `nodeagent revert` commands; the others drive the subsystem
in-process (RuntimeSubsystem.observe/plan/apply/run/revert). Either way the daemon's temporary directory
is the Root; restarts go through runtime.restart_command (a script that stops the
test daemon by pid and starts it again), because these daemons are not under systemd.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from integration.agent import answers
from nodeagent.errors import PermanentError
from nodeagent.plan import Step
from nodeagent.subsystem import Phase
from tests.support import free_port, wait_until

from .conftest import Containerd, agent, write_shim

pytestmark = [pytest.mark.integration, pytest.mark.root]

NAIVE_DROPIN = b"""version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]
  BinaryName = "/usr/bin/nvidia-container-runtime"
"""


async def nodeagent_cli(d: Containerd, command: str, **runtime: Any) -> subprocess.CompletedProcess[bytes]:
    """`nodeagent COMMAND --only runtime` on the daemon's root, with the settings `agent()` uses."""
    values = {
        "socket": d.socket_host,
        "restart_command": [str(d.restart_script)],
        "log_path": d.log_host,
        "health_timeout_s": 20.0,
        **runtime,
    }
    config = d.base / "nodeagent.toml"
    config.write_text("version = 1\n[runtime]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nodeagent",
        command,
        "--only",
        "runtime",
        "--root",
        str(d.base),
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return subprocess.CompletedProcess([command], proc.returncode or 0, out, err)


async def rewrite_and_time_repair(d: Containerd, original: bytes) -> float:
    """Something rewrites the config without the runtime; return how long until the entry is back (< 2 s)."""
    tmp = d.config.with_suffix(".new")
    tmp.write_bytes(original)
    tmp.replace(d.config)
    t0 = time.monotonic()
    while b"runtimes.nvidia" not in d.config.read_bytes():
        assert time.monotonic() - t0 < 2.0, "runtime entry not back within 2 s"
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


async def run_sandbox(d: Containerd, handler: str) -> str:
    import cri_grpc
    import cri_pb2

    channel = Channel(path=str(d.sock))
    try:
        stub = cri_grpc.RuntimeServiceStub(channel)
        ns = cri_pb2.NamespaceOption(network=cri_pb2.NODE, pid=cri_pb2.POD, ipc=cri_pb2.POD)
        config = cri_pb2.PodSandboxConfig(
            metadata=cri_pb2.PodSandboxMetadata(name="gpu-pod", uid=str(uuid.uuid4()), namespace="default"),
            hostname="",  # host network: the node's UTS namespace, no hostname of its own
            log_directory=str(d.base / "pod-logs"),
            linux=cri_pb2.LinuxPodSandboxConfig(
                security_context=cri_pb2.LinuxSandboxSecurityContext(namespace_options=ns)
            ),
        )
        reply = await asyncio.wait_for(
            stub.RunPodSandbox(cri_pb2.RunPodSandboxRequest(config=config, runtime_handler=handler)), 60
        )
        return str(reply.pod_sandbox_id)
    finally:
        channel.close()


async def remove_sandbox(d: Containerd, sandbox_id: str) -> None:
    import cri_grpc
    import cri_pb2

    channel = Channel(path=str(d.sock))
    try:
        stub = cri_grpc.RuntimeServiceStub(channel)
        await stub.StopPodSandbox(cri_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
        await stub.RemovePodSandbox(cri_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    finally:
        channel.close()


def k0s_containerd(factory: Any) -> Containerd:
    """containerd laid out as k0s does it: /etc/k0s/containerd.toml importing /etc/k0s/containerd.d/*.toml.

    The import names the real path in the temporary root (containerd globs a relative pattern against its
    working directory); the agent finds the directory through its k0s layout.
    """
    d: Containerd = factory(config_host="/etc/k0s/containerd.toml", socket_host="/run/k0s/containerd.sock", start=False)
    (d.base / "etc/k0s/containerd.d").mkdir(parents=True)
    d.config.write_text(
        d.config.read_text().replace("imports = []", f'imports = ["{d.base}/etc/k0s/containerd.d/*.toml"]')
    )
    d.start()
    d.wait_cri_ok()
    return d


async def test_a_cri_sandbox_with_nvidia_handler(containerd_factory: Any, pause_archive: Any) -> None:
    d = containerd_factory()
    d.ctr("-n", "k8s.io", "images", "import", str(pause_archive))
    shim, calls = write_shim(d.base)

    with pytest.raises(GRPCError) as before:
        await run_sandbox(d, "nvidia")
    assert 'no runtime for "nvidia" is configured' in str(before.value.message)

    sub = agent(d, runtime_path=str(shim))
    observed = await sub.observe()
    assert observed.version is not None and observed.version.version == "1.6.20"
    assert "/proc/" in observed.version.source  # the binary behind the socket
    plan = sub.plan(observed)
    assert not plan.error, plan.error
    assert [s.action for s in plan.steps] == ["write-file", "restart-runtime"]
    old_pid = d.pid()
    # The real command a user runs, with the same settings as the in-process subsystem above.
    applied = await nodeagent_cli(d, "apply", runtime_path=str(shim))
    assert applied.returncode == 0, applied.stderr
    assert b"runtime: changed /etc/containerd/config.toml; restarted" in applied.stdout, applied.stdout
    assert d.pid() != old_pid

    sandbox = await run_sandbox(d, "nvidia")
    try:
        assert sandbox
        recorded = calls.read_text()
        assert "create" in recorded and "start" in recorded, recorded
    finally:
        await remove_sandbox(d, sandbox)

    # a second apply: nothing to do, no restart
    pid = d.pid()
    assert sub.plan(await sub.observe()).empty
    assert d.pid() == pid

    # revert: original bytes, one restart, handler gone again
    reverted = await nodeagent_cli(d, "revert", runtime_path=str(shim))
    assert reverted.returncode == 0, reverted.stderr
    assert b"runtime: restored /etc/containerd/config.toml; restarted" in reverted.stdout, reverted.stdout
    d.wait_cri_ok()
    with pytest.raises(GRPCError, match="no runtime"):
        await run_sandbox(d, "nvidia")


async def test_b_k0s_style_dropin_keeps_runc_and_cri(containerd_factory: Any) -> None:
    d = k0s_containerd(containerd_factory)
    shim, _ = write_shim(d.base)
    main_before = d.config.read_bytes()
    sub = agent(d, runtime_path=str(shim))
    plan = sub.plan(await sub.observe())
    assert not plan.error, plan.error
    assert any("distribution k0s" in e for e in plan.evidence)
    assert [s.target for s in plan.steps if s.action == "write-file"] == ["/etc/k0s/containerd.d/99-nvidia.toml"]
    await sub.apply(plan)
    assert d.config.read_bytes() == main_before, "the main file is not touched in drop-in mode"
    dump = d.dump()
    assert '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]' in dump
    assert '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]' in dump
    assert f'BinaryName = "{shim}"' in dump
    assert d.cri_status() == "ok"
    await sub.revert()
    assert not (d.base / "etc/k0s/containerd.d/99-nvidia.toml").exists()
    d.wait_cri_ok()


async def test_c_rejected_change_is_rolled_back(containerd_factory: Any) -> None:
    d = k0s_containerd(containerd_factory)
    sub = agent(d, health_timeout_s=8.0)
    plan = sub.plan(await sub.observe())
    assert not plan.error, plan.error
    # Swap in the drop-in older tooling wrote: only runtimes.nvidia. containerd 1.6 accepts it in
    # `config dump` but its CRI plugin then fails to load (the whole CRI table is replaced).
    steps = tuple(
        Step(s.action, s.target, s.summary, s.diff, s.disruption, s.disrupts, replace(s.payload, new=NAIVE_DROPIN))
        if s.action == "write-file"
        else s
        for s in plan.steps
    )
    bad = type(plan)(plan.subsystem, steps, plan.evidence, plan.warnings)
    started = time.monotonic()
    with pytest.raises(PermanentError) as failure:
        await sub.apply(bad)
    assert time.monotonic() - started < 40
    message = str(failure.value)
    assert "no corresponding runtime configured" in message, message  # containerd's own words
    assert not (d.base / "etc/k0s/containerd.d/99-nvidia.toml").exists()
    assert sub.status().phase == Phase.FAILED and "no corresponding runtime" in sub.status().reason
    d.wait_cri_ok()  # serving again, on the old files


async def test_e_drift_is_repaired_within_two_seconds(containerd_factory: Any) -> None:
    d = containerd_factory()
    original = d.config.read_bytes()
    sub = agent(d, watch_poll_s=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(sub.run(stop))
    try:
        await asyncio.to_thread(
            wait_until, lambda: b"runtimes.nvidia" in d.config.read_bytes(), timeout_s=30, what="apply"
        )
        await asyncio.to_thread(wait_until, lambda: sub.status().phase == Phase.RUNNING, timeout_s=30, what="healthy")
        restarts = sub.restarts
        print(f"drift repaired in {await rewrite_and_time_repair(d, original):.3f}s")
        await asyncio.to_thread(wait_until, lambda: sub.restarts == restarts + 1, timeout_s=30, what="restart")
        d.wait_cri_ok()
        # reconciling a node in the desired state: no writes, no restarts
        pid, data = d.pid(), d.config.read_bytes()
        await sub.reconcile("poll")
        assert (d.pid(), d.config.read_bytes(), sub.restarts) == (pid, data, restarts + 1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_e_drift_is_repaired_behind_a_running_nodeagent_process(containerd_factory: Any) -> None:
    """The same drift check against the real `nodeagent run --only runtime` process."""

    d = containerd_factory()
    original = d.config.read_bytes()
    config = d.base / "nodeagent.toml"
    config.write_text(
        "version = 1\n[runtime]\n"
        f'socket = "{d.socket_host}"\nrestart_command = ["{d.restart_script}"]\nlog_path = "{d.log_host}"\n'
        "health_timeout_s = 20.0\n"
    )
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nodeagent",
        "run",
        "--only",
        "runtime",
        "--root",
        str(d.base),
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        "--log-format",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await asyncio.to_thread(
            wait_until, lambda: b"runtimes.nvidia" in d.config.read_bytes(), timeout_s=60, what="apply by the agent"
        )
        d.wait_cri_ok()
        # The agent has settled (restart done, health checked, watching) once it reports ready.
        await asyncio.to_thread(
            wait_until, lambda: answers(f"http://127.0.0.1:{port}/readyz"), timeout_s=60, what="agent /readyz"
        )
        print(f"drift repaired by the agent process in {await rewrite_and_time_repair(d, original):.3f}s")
    finally:
        if proc.returncode is None:
            proc.terminate()
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, out.decode()[-2000:]
