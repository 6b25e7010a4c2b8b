"""``runtime.set_as_default = false`` with nvidia's handler as the default runtime.

Decision (docs/parity.md, "Default runtime"): a default someone else set (nvidia-ctk, the GPU Operator,
whose installer sets it by default, an admin) is kept and named in a warning, because GPU pods without a
RuntimeClass may rely on it, and ``false`` is also the value of a node that never chose. A default the
agent itself set (``set_as_default`` was true) is taken back when the setting turns false, as a plan step
of its own; revert would also restore the original. nvidia-ctk removes either kind.
"""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from nodeagent.runtime import containerd_config as ctdconf

from .conftest import fixture, make_node

CONFIG = "/etc/containerd/config.toml"
DROPIN = "/etc/containerd/conf.d/99-nvidia.toml"
IMPORTING = fixture("containerd-1.6.20-default.toml").replace(
    b"imports = []", b'imports = ["/etc/containerd/conf.d/*.toml"]'
)


def _effective_default(node: Any, version: str) -> str:
    docs: dict[str, dict[str, Any]] = {}
    listings: dict[str, tuple[str, ...]] = {}
    for path in (CONFIG, DROPIN, "/etc/containerd/conf.d/00-site.toml"):
        data = node.read(path)
        if data is not None:
            docs[path] = tomllib.loads(data.decode())
    listings["/etc/containerd/conf.d"] = tuple(
        p.rsplit("/", 1)[1] for p in docs if p.startswith("/etc/containerd/conf.d")
    )
    merged = ctdconf.merge_configs(
        [docs[p] for p in ctdconf.load_order(CONFIG, docs, listings)], deep=ctdconf.deep_merge(version)
    )
    cri = merged["plugins"]["io.containerd.grpc.v1.cri"]
    return str(cri["containerd"].get("default_runtime_name") or "runc")


@pytest.mark.parametrize(
    ("files", "version"),
    [
        ({CONFIG: fixture("containerd-1.6.20-default.toml")}, "1.6.20"),  # in place
        ({CONFIG: IMPORTING, "/etc/containerd/conf.d/00-site.toml": b""}, "1.6.20"),  # drop-in, tables replaced
        ({CONFIG: IMPORTING, "/etc/containerd/conf.d/00-site.toml": b""}, "2.0.4"),  # drop-in, deep-merged
    ],
    ids=["in-place", "dropin-1.6", "dropin-2.0"],
)
async def test_a_default_the_agent_set_is_taken_back_when_the_setting_turns_false(
    tmp_path: Any, files: dict[str, bytes], version: str
) -> None:
    node = make_node(tmp_path, files, set_as_default=True, containerd_version=version)
    await node.sub.apply(node.sub.plan(await node.sub.observe()))
    assert _effective_default(node, version) == "nvidia"
    later = make_node(tmp_path, None, set_as_default=False, containerd_version=version)
    plan = later.sub.plan(await later.sub.observe())
    assert not plan.error, plan.error
    assert "change-default-runtime" in [s.action for s in plan.steps]
    assert not any("left by nvidia-ctk" in w for w in plan.warnings), plan.warnings
    await later.sub.apply(plan)
    assert _effective_default(later, version) == "runc"
    for _, binary in later.sub.spec.handlers():  # the handlers stay
        assert binary.encode() in b"".join(later.read(p) or b"" for p in (CONFIG, DROPIN))
    again = later.sub.plan(await later.sub.observe())
    assert again.empty, [s.summary for s in again.steps]


async def test_a_default_someone_else_set_is_kept_and_named(tmp_path: Any) -> None:
    text = fixture("containerd-1.6.20-default.toml").replace(
        b'default_runtime_name = "runc"', b'default_runtime_name = "nvidia"'
    )
    assert text != fixture("containerd-1.6.20-default.toml")
    node = make_node(tmp_path, {CONFIG: text}, containerd_version="1.6.20")
    plan = node.sub.plan(await node.sub.observe())
    assert not plan.error, plan.error
    assert "change-default-runtime" not in [s.action for s in plan.steps]
    assert any("default_runtime_name = 'nvidia'" in w and "set_as_default = true" in w for w in plan.warnings)
    await node.sub.apply(plan)
    assert _effective_default(node, "1.6.20") == "nvidia"


async def test_docker_keeps_a_default_naming_nvidia_and_says_so(tmp_path: Any) -> None:
    path = "/etc/docker/daemon.json"
    node = make_node(tmp_path, {path: b'{\n    "default-runtime": "nvidia"\n}\n'})
    plan = node.sub.plan(await node.sub.observe())
    assert not plan.error, plan.error
    assert any('"default-runtime": "nvidia"' in w for w in plan.warnings), plan.warnings
    await node.sub.apply(plan)
    assert b'"default-runtime": "nvidia"' in (node.read(path) or b"")


async def test_a_foreign_default_copied_into_the_agents_1_6_dropin_stays(tmp_path: Any) -> None:
    """containerd < 2.0: the agent's drop-in carries a copy of the main file's CRI table, default included."""
    main = IMPORTING.replace(b'default_runtime_name = "runc"', b'default_runtime_name = "nvidia"')
    files = {CONFIG: main, "/etc/containerd/conf.d/00-site.toml": b""}
    node = make_node(tmp_path, files, containerd_version="1.6.20")
    await node.sub.apply(node.sub.plan(await node.sub.observe()))
    assert b'default_runtime_name = "nvidia"' in (node.read(DROPIN) or b"")
    again = node.sub.plan(await node.sub.observe())
    assert again.empty, [s.summary for s in again.steps]
    assert _effective_default(node, "1.6.20") == "nvidia"
