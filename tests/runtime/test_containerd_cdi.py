"""``enable_cdi`` by containerd version: written for 1.7 to 2.1 and an unknown version, not from 2.2.

containerd 2.2 deprecates ``[plugins."io.containerd.cri.v1.runtime"] enable_cdi`` and 2.4 removes it (CDI is
always on, containerd's RELEASES.md); 1.7 to 2.1 need ``enable_cdi = true`` for CDI. The real containerd 2.4.2
reading what is written here: integration/runtime/test_containerd2.py.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from nodeagent import testing
from nodeagent.backends.hostfs import Root
from nodeagent.backends.runtimectl import SimRuntimeControl, Target, VersionInfo
from nodeagent.runtime.containerd_config import cdi_builtin
from nodeagent.runtime.subsystem import RuntimeSubsystem
from nodeagent.settings import Settings, replace

from .conftest import Node, fixture

CONFIG = "/etc/containerd/config.toml"
V2_FILE = "containerd-1.6.20-default.toml"
V3_FILE = "containerd-2.0-default.toml"
V2_CRI = "io.containerd.grpc.v1.cri"
V3_CRI = "io.containerd.cri.v1.runtime"


class NoVersion(SimRuntimeControl):
    """A containerd whose version cannot be found (no binary, no socket answer)."""

    async def version(self, target: Target) -> VersionInfo | None:
        return None


def unknown_version_node(tmp_path: Path, files: dict[str, bytes], **runtime: Any) -> Node:
    root = Root(tmp_path / "root")
    root.path.mkdir(parents=True)
    control = NoVersion()
    ctx = testing.context(root, replace(Settings(), "runtime", **runtime), runtime_control=control, node_name="n")
    node = Node(root, ctx, control, RuntimeSubsystem(ctx, control=control))
    for path, data in files.items():
        node.write(path, data)
    return node


def v3_file(enable_cdi: str = "") -> bytes:
    """containerd 2.0's default config (which sets ``enable_cdi = true``) with that key removed, or set to
    ``enable_cdi`` as another tool left it."""
    text = fixture(V3_FILE).decode()
    assert "    enable_cdi = true\n" in text
    return text.replace("    enable_cdi = true\n", f"    enable_cdi = {enable_cdi}\n" if enable_cdi else "").encode()


def file_of(name: str) -> bytes:
    return v3_file() if name == V3_FILE else fixture(name)


def cri_of(node: Node, plugin: str) -> dict[str, Any]:
    data = node.read(CONFIG)
    assert data is not None
    out: dict[str, Any] = tomllib.loads(data.decode())["plugins"][plugin]
    return out


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("1.6.20", False),
        ("1.7.27", False),
        ("2.0.4", False),
        ("2.1.0", False),
        ("2.1.99", False),
        ("2.2.0", True),
        ("v2.2.0-rc.1", True),
        ("2.4.2", True),
        ("2.10.0", True),
        ("3.0.0", True),
        ("", None),
        ("unknown", None),
    ],
)
def test_cdi_builtin_by_version(version: str, expected: bool | None) -> None:
    assert cdi_builtin(version) is expected


# (containerd version, file, CRI table the file keeps, enable_cdi written)
CASES = [
    ("1.7.27", V2_FILE, V2_CRI, True),
    ("2.0.4", V3_FILE, V3_CRI, True),
    ("2.1.0", V3_FILE, V3_CRI, True),
    ("2.2.0", V3_FILE, V3_CRI, False),
    ("2.4.2", V3_FILE, V3_CRI, False),
    ("2.4.2", V2_FILE, V2_CRI, False),  # a version 2 file on containerd 2.4 (migrated: the key would be dropped)
]


@pytest.mark.parametrize(("version", "name", "plugin", "written"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
async def test_enable_cdi_by_containerd_version(
    node_factory: Any, version: str, name: str, plugin: str, written: bool
) -> None:
    node = node_factory({CONFIG: file_of(name)}, enable_cdi=True, containerd_version=version)
    plan = node.sub.plan(await node.sub.observe())
    assert not plan.error, plan.error
    actions = [s.action for s in plan.steps]
    await node.sub.apply(plan)
    cri = cri_of(node, plugin)
    assert cri["containerd"]["runtimes"]["nvidia"]["options"]["BinaryName"], cri
    builtin = [e for e in plan.evidence if "always has CDI" in e]
    if written:
        assert cri["enable_cdi"] is True
        assert "change-cdi" in actions, actions
        assert not builtin, plan.evidence
    else:
        assert "enable_cdi" not in cri, cri
        assert "change-cdi" not in actions, actions
        assert builtin and f"containerd {version} always has CDI" in builtin[0], plan.evidence
    # satisfied: CDI counts as on (from the key, or from containerd itself), so nothing more to do
    assert node.sub.plan(await node.sub.observe()).empty


async def test_unknown_version_keeps_writing_enable_cdi_and_says_why(tmp_path: Path) -> None:
    node = unknown_version_node(tmp_path, {CONFIG: v3_file()}, enable_cdi=True)
    plan = node.sub.plan(await node.sub.observe())
    assert not plan.error, plan.error
    assert "change-cdi" in [s.action for s in plan.steps]
    said = [e for e in plan.evidence if "enable_cdi = true is written" in e]
    assert said and "2.2 and later always have CDI and would not need it" in said[0], plan.evidence
    await node.sub.apply(plan)
    assert cri_of(node, V3_CRI)["enable_cdi"] is True
    assert node.sub.plan(await node.sub.observe()).empty


@pytest.mark.parametrize(("version", "value"), [("2.4.2", "true"), ("2.4.2", "false"), ("2.2.0", "true")])
async def test_a_leftover_enable_cdi_on_containerd_2_2_and_later_is_left_as_it_is(
    node_factory: Any, version: str, value: str
) -> None:
    """Another tool's ``enable_cdi`` (nvidia-ctk writes it on every version): not ours, never removed or changed
    (2.4 ignores a ``false``; a ``true`` is what is asked for)."""
    node = node_factory({CONFIG: v3_file(value)}, enable_cdi=True, containerd_version=version)
    plan = node.sub.plan(await node.sub.observe())
    assert not plan.error, plan.error
    assert "change-cdi" not in [s.action for s in plan.steps]
    await node.sub.apply(plan)
    data = node.read(CONFIG)
    assert data is not None and f"enable_cdi = {value}" in data.decode()
    assert cri_of(node, V3_CRI)["enable_cdi"] is (value == "true")


@pytest.mark.parametrize("version", ["2.2.0", "2.3.1"])
async def test_enable_cdi_false_on_containerd_2_2_and_2_3_is_turned_on_as_before(
    node_factory: Any, version: str
) -> None:
    """containerd 2.2 and 2.3 still read ``enable_cdi``: a ``false`` another tool left turns CDI off there, so
    runtime.enable_cdi sets it (a CDI step of its own), as for containerd 1.7 to 2.1."""
    node = node_factory({CONFIG: v3_file("false")}, enable_cdi=True, containerd_version=version)
    plan = node.sub.plan(await node.sub.observe())
    assert not plan.error, plan.error
    assert "change-cdi" in [s.action for s in plan.steps]
    assert any(f"containerd {version} has CDI unless enable_cdi = false" in e for e in plan.evidence), plan.evidence
    await node.sub.apply(plan)
    assert cri_of(node, V3_CRI)["enable_cdi"] is True
    assert node.sub.plan(await node.sub.observe()).empty


async def test_without_enable_cdi_asked_nothing_is_said_about_it(node_factory: Any) -> None:
    node = node_factory({CONFIG: v3_file()}, containerd_version="2.4.2")
    plan = node.sub.plan(await node.sub.observe())
    assert not any("enable_cdi" in e for e in plan.evidence), plan.evidence
