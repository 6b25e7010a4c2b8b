"""Messy starting points against the real containerd 1.6: what its own `config dump` makes of our files.

An empty or comment-only config (common on fresh nodes) must come out with a ``version`` line containerd
reads, and the post-write validation must look for the handler in the *effective* config, so a file
containerd accepts but ignores is refused instead of reported as success.
"""

from __future__ import annotations

from typing import Any

import pytest

from nodeagent.backends.runtimectl import HostRuntimeControl

from .conftest import agent, write_shim

pytestmark = [pytest.mark.integration, pytest.mark.root]

UNVERSIONED = b"""[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]
  BinaryName = "{shim}"
"""


@pytest.mark.parametrize("start", [b"", b"# containerd config: defaults\n\n"])
async def test_empty_or_comment_only_config_gets_a_version_containerd_reads(
    containerd_factory: Any, start: bytes
) -> None:
    d = containerd_factory()  # a running daemon: validation runs its binary through /proc/PID/exe
    shim, _ = write_shim(d.base)
    (d.base / "etc/containerd/empty.toml").write_bytes(start)
    sub = agent(d, runtime_path=str(shim), config_path="/etc/containerd/empty.toml", restart="none")
    plan = sub.plan(await sub.observe())
    assert not plan.error, plan.error
    await sub.apply(plan)
    written = (d.base / "etc/containerd/empty.toml").read_bytes()
    assert written.startswith(start.rstrip(b"\n")) and b"\nversion = 2\n" in b"\n" + written
    target = plan.steps[0].payload.target
    assert await HostRuntimeControl(d.root).validate(target) == ""


async def test_validation_refuses_a_file_containerd_accepts_but_ignores(containerd_factory: Any) -> None:
    d = containerd_factory()
    shim, _ = write_shim(d.base)
    path = d.base / "etc/containerd/unversioned.toml"
    path.write_bytes(UNVERSIONED.replace(b"{shim}", str(shim).encode()))
    sub = agent(d, runtime_path=str(shim), config_path="/etc/containerd/unversioned.toml")
    observed = await sub.observe()
    assert observed.detected is not None
    target = sub._target(observed.detected)
    problem = await HostRuntimeControl(d.root).validate(target)
    assert "lacks runtime 'nvidia'" in problem, problem
