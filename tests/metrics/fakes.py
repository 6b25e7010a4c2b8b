"""The metrics tests' context builder; their GPU double is ``nodeagent.testing.ScriptedGpus``."""

from __future__ import annotations

from typing import Any

from nodeagent import testing
from nodeagent.backends.hostfs import Root
from nodeagent.settings import load
from nodeagent.subsystem import Context, Status
from nodeagent.testing.scripted import DEFAULT_VALUES, H100, MIG_VALUES, ScriptedGpus, gpu_info

FakeGpus = ScriptedGpus  # the name the metrics tests use
__all__ = ["DEFAULT_VALUES", "H100", "MIG_VALUES", "FakeGpus", "ScriptedGpus", "gpu_info", "make_context"]


def make_context(
    tmp_path: Any,
    gpus: FakeGpus,
    *,
    env: dict[str, str] | None = None,
    statuses: dict[str, Status] | None = None,
) -> Context:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    settings = load(env={"NODEAGENT_KUBELET__POD_RESOURCES_SOCKET": "/run/k.sock", **(env or {})})
    ctx = testing.context(Root(root), settings, gpus=gpus, node_name="node-a")
    for name, status in (statuses or {}).items():
        ctx.board.track(name, lambda status=status: status)
    return ctx
