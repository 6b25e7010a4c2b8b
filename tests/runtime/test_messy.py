"""Messy and hostile starting points (issue: never break the runtime), planned against a sandbox root."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from nodeagent.backends.runtimectl import dumped_handler_problem

RUNTIME = "/usr/bin/nvidia-container-runtime"
CONFIG = "/etc/containerd/config.toml"


async def plan_of(node: Any) -> Any:
    return node.sub.plan(await node.sub.observe())


def new_bytes(plan: Any, path: str) -> bytes:
    return next(s.payload.new for s in plan.steps if s.target == path)


# ----------------------------------------------------------------------------- 1: empty / comment-only


@pytest.mark.parametrize("start", [b"", b"\n\n", b"# managed by cloud-init\n# defaults apply\n"])
@pytest.mark.parametrize(("ctd_version", "want"), [("1.6.20", 2), ("2.0.4", 3)])
async def test_empty_or_comment_only_containerd_config_gets_a_version(
    node_factory: Any, start: bytes, ctd_version: str, want: int
) -> None:
    node = node_factory({CONFIG: start}, containerd_version=ctd_version)
    plan = await plan_of(node)
    assert not plan.error, plan.error
    new = new_bytes(plan, CONFIG)
    doc = tomllib.loads(new.decode())
    assert doc["version"] == want
    key = "io.containerd.grpc.v1.cri" if want == 2 else "io.containerd.cri.v1.runtime"
    assert doc["plugins"][key]["containerd"]["runtimes"]["nvidia"]["options"]["BinaryName"] == RUNTIME
    assert new.startswith(start.rstrip(b"\n"))


DUMP_V2 = b"""version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]
    BinaryName = "/usr/bin/nvidia-container-runtime"
"""


def test_dump_check_wants_the_handler_with_its_binary() -> None:
    assert dumped_handler_problem(DUMP_V2, "nvidia", RUNTIME) == ""
    assert "lacks runtime 'nvidia'" in dumped_handler_problem(b"version = 2\n", "nvidia", RUNTIME)
    wrong = dumped_handler_problem(DUMP_V2, "nvidia", "/opt/other")
    assert "BinaryName '/usr/bin/nvidia-container-runtime'" in wrong
    assert dumped_handler_problem(DUMP_V2, "", RUNTIME) == ""
