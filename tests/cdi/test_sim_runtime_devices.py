"""A simulated node's CDI spec names device nodes containerd can inject: each ``hostPath`` is the sandbox's
runtime node (``SIM_DEV_DIR``, a character device with /dev/null's numbers when the agent is root) as the
host sees it, ``path`` stays the container's (``/dev/nvidia0``). A node's spec (the host root, or a test's
root without ``runtime_devices``) is left as it is."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from nodeagent import testing
from nodeagent.backends.hostfs import Root
from nodeagent.backends.sim import sandbox
from nodeagent.cdi import spec as cdispec
from nodeagent.cdi.subsystem import _runtime_devices
from nodeagent.subsystem import Context
from tests.cdi.test_spec import _spec_for, _validate
from tests.driver.fakes import make_settings

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")


def sim_ctx(tmp_path: Path, inv: Any) -> Context:
    ctx = testing.context(Root(tmp_path), make_settings(), inventory=inv, runtime_devices=True)
    assert sandbox.populate_sandbox(ctx.root, inv)
    return ctx


def nodes_of(spec: dict[str, Any]) -> list[dict[str, Any]]:
    edits = [spec["containerEdits"]] + [d["containerEdits"] for d in spec["devices"]]
    return [n for e in edits for n in e.get("deviceNodes", [])]


def test_runtime_device_nodes_sets_host_paths_only() -> None:
    spec = {
        "cdiVersion": "0.3.0",
        "kind": "nvidia.com/gpu",
        "devices": [{"name": "gpu0", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"}]}}],
        "containerEdits": {"deviceNodes": [{"path": "/dev/nvidiactl"}], "mounts": [{"hostPath": "/a"}]},
    }
    got = cdispec.runtime_device_nodes(spec, "/sb/run/nodeagent/sim-dev/")
    assert got["devices"][0]["containerEdits"]["deviceNodes"] == [
        {"path": "/dev/nvidia0", "hostPath": "/sb/run/nodeagent/sim-dev/dev/nvidia0"}
    ]
    assert got["containerEdits"]["deviceNodes"] == [
        {"path": "/dev/nvidiactl", "hostPath": "/sb/run/nodeagent/sim-dev/dev/nvidiactl"}
    ]
    assert got["containerEdits"]["mounts"] == [{"hostPath": "/a"}]
    assert got["cdiVersion"] == "0.5.0"  # hostPath needs 0.5.0
    assert "hostPath" not in spec["devices"][0]["containerEdits"]["deviceNodes"][0]  # the input is unchanged


def test_a_real_node_never_gets_runtime_host_paths(tmp_path: Path) -> None:
    assert _runtime_devices(Root("/"), sandbox.SIM_DEV_DIR) == ""
    assert _runtime_devices(Root(tmp_path), sandbox.SIM_DEV_DIR) == ""  # no such directory in this root
    assert _runtime_devices(Root(tmp_path), "") == ""


async def test_a_simulated_nodes_spec_names_the_sandboxs_runtime_nodes(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(2, mig_on=(1,))
    ctx = sim_ctx(tmp_path, inv)
    spec = await _spec_for(ctx)
    _validate(spec)
    base = str(tmp_path / "run/nodeagent/sim-dev")
    nodes = nodes_of(spec)
    assert nodes and all(n["hostPath"] == base + n["path"] for n in nodes)
    assert {"/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-caps/nvidia-cap147"} <= {n["path"] for n in nodes}
    for n in nodes:
        assert Path(n["hostPath"]).exists(), n["hostPath"]
    mounts = [m["hostPath"] for m in spec["containerEdits"]["mounts"]]
    assert not any(m.startswith(str(tmp_path)) for m in mounts)  # only device nodes are re-rooted


@ROOT_ONLY
async def test_as_root_the_runtime_nodes_are_character_devices_of_dev_null(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    ctx = sim_ctx(tmp_path, inv)
    spec = await _spec_for(ctx)
    for n in nodes_of(spec):
        st = Path(n["hostPath"]).stat()
        assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3), n
    placeholder = ctx.root.read_bytes("/dev/nvidia0")  # the sandbox's own /dev keeps NVIDIA's numbers
    assert placeholder == b"char 195:0\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="as root the nodes are character devices")
def test_without_root_the_runtime_nodes_are_placeholders(tmp_path: Path) -> None:
    root = Root(tmp_path)
    assert sandbox.write_runtime_device_node(root, "/dev/nvidia0", 195, 0)
    assert root.read_bytes(sandbox.SIM_DEV_DIR + "/dev/nvidia0") == b"char 195:0\n"
    assert not sandbox.write_runtime_device_node(root, "/dev/nvidia0", 195, 0)


async def test_new_mig_instances_get_runtime_nodes_too(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(2)
    ctx = sim_ctx(tmp_path, inv)
    changed = sandbox.sync_mig_capabilities(ctx.root, sandbox.sandbox_inventory(2, mig_on=(1,)))
    assert sandbox.SIM_DEV_DIR + "/dev/nvidia-caps/nvidia-cap147" in changed
    assert ctx.root.exists(sandbox.SIM_DEV_DIR + "/dev/nvidia-caps/nvidia-cap148")
    again = sandbox.sync_mig_capabilities(ctx.root, sandbox.sandbox_inventory(2, mig_on=(1,)))
    assert not [p for p in again if p.startswith(sandbox.SIM_DEV_DIR)]
