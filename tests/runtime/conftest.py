"""Shared helpers for the runtime tests: a sandbox root per test and a Context around it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nodeagent import testing
from nodeagent.backends.hostfs import Root
from nodeagent.backends.runtimectl import SimRuntimeControl
from nodeagent.runtime.subsystem import RuntimeSubsystem
from nodeagent.settings import Settings, replace
from nodeagent.subsystem import Context

FIXTURES = Path(__file__).parent / "fixtures"
CONTAINERD_16 = Path(__file__).parents[2] / "nodeagent/backends/sim/data/containerd-1.6.20-default.toml"


def fixture(name: str) -> bytes:
    if name == "containerd-1.6.20-default.toml":
        return CONTAINERD_16.read_bytes()
    return (FIXTURES / name).read_bytes()


@dataclass
class Node:
    """A sandbox host root with a runtime subsystem over it."""

    root: Root
    ctx: Context
    control: SimRuntimeControl
    sub: RuntimeSubsystem
    published: list[Any] = field(default_factory=list)

    def write(self, host_path: str, data: bytes | str) -> None:
        local = self.root.resolve(host_path)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data.encode() if isinstance(data, str) else data)

    def read(self, host_path: str) -> bytes | None:
        return self.root.read_bytes(host_path)

    def snapshot(self) -> dict[str, bytes]:
        """Every file under the root except the agent's own state."""
        out = {}
        for p in sorted(self.root.path.rglob("*")):
            if p.is_file() and "var/lib/nodeagent" not in p.as_posix():
                out[self.root.host_path(p)] = p.read_bytes()
        return out


def make_node(tmp_path: Path, files: dict[str, bytes] | None = None, **runtime: Any) -> Node:
    root = Root(tmp_path / "root")
    root.path.mkdir(parents=True, exist_ok=True)
    poll_s = runtime.pop("watch_poll_s", None)
    settings = replace(Settings(), "runtime", **runtime) if runtime else Settings()
    if poll_s is not None:
        settings = replace(settings, "watch", poll_s=poll_s)
    control = SimRuntimeControl(version_text=runtime.get("containerd_version") or "1.6.20")
    ctx = testing.context(root, settings, runtime_control=control, node_name="test-node")
    node = Node(root, ctx, control, RuntimeSubsystem(ctx, control=control))
    for path, data in (files or {}).items():
        node.write(path, data)
    return node


@pytest.fixture
def node_factory(tmp_path: Path) -> Any:
    counter = iter(range(1000))

    def make(files: dict[str, bytes] | None = None, **runtime: Any) -> Node:
        return make_node(tmp_path / f"n{next(counter)}", files, **runtime)

    return make
