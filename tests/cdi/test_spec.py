"""CDI spec generation: schema, existing host paths for every driver layout, path mapping, hooks,
lowest cdiVersion, no rewrite of unchanged content, regeneration on MIG changes, the command."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from nodeagent import testing
from nodeagent.backends.hostfs import Root
from nodeagent.backends.sim import sandbox
from nodeagent.cdi import spec as cdispec
from nodeagent.cdi.command import generate_command
from nodeagent.cdi.subsystem import CdiSubsystem
from nodeagent.driver.subsystem import DriverSubsystem
from nodeagent.subsystem import Context, Phase, Status
from tests.driver.fakes import make_ctx, make_settings, prefixed_node, real_usr_local_nvidia

SCHEMA = json.loads((Path(__file__).parent / "cdi_schema.json").read_text())
SPEC = "/var/run/cdi/nvidia.yaml"


def _validate(spec: dict[str, Any]) -> None:
    jsonschema.validate(spec, SCHEMA)


async def _spec_for(ctx: Context) -> dict[str, Any]:
    drv = DriverSubsystem(ctx)
    await drv.start()
    assert drv.status().ready, drv.status().reason
    cdi = CdiSubsystem(ctx)
    await cdi.start()
    assert cdi.status().ready, cdi.status().reason
    data = ctx.root.read_bytes(ctx.settings.cdi.spec_path)
    assert data is not None
    loaded: dict[str, Any] = yaml.safe_load(data)
    assert loaded == cdi.spec
    return loaded


def _hook_binary(root: Root, path: str = "/usr/bin/nvidia-cdi-hook") -> None:
    root.write_atomic(path, b"#!/bin/sh\n", mode=0o755)


def _links(spec: dict[str, Any]) -> list[str]:
    out = []
    for hook in spec["containerEdits"]["hooks"]:
        args = hook["args"]
        out += [args[i + 1].split("::")[1] for i, a in enumerate(args) if a == "--link"]
    return out


@pytest.mark.parametrize(
    ("prefix", "layout"),
    [
        ("/", "debian"),
        ("/run/nvidia/driver", "debian"),
        ("/home/kubernetes/bin/nvidia", "flat"),
        ("/usr/local/nvidia", "real"),
    ],
)
async def test_spec_for_each_layout_validates_and_names_only_existing_paths(
    tmp_path: Path, prefix: str, layout: str
) -> None:
    inv = sandbox.sandbox_inventory(2, mig_on=(1,))
    if layout == "real":
        root = real_usr_local_nvidia(tmp_path)
        sandbox.write_kernel_state(root, inv)
        sandbox.write_device_placeholders(root, inv)
    else:
        root = prefixed_node(tmp_path, inv, prefix, layout)  # type: ignore[arg-type]
    _hook_binary(root)
    sandbox.write_helper_process(root, 5, "nvidia-persistenced")
    ctx = make_ctx(tmp_path, inv)
    spec = await _spec_for(ctx)
    _validate(spec)
    for host_path in cdispec.host_paths(spec):
        assert root.exists(host_path), host_path
        assert not host_path.startswith(str(tmp_path)), "agent view leaked into the spec"
    names = [d["name"] for d in spec["devices"]]
    assert names == [
        "0",
        inv.gpus[0].uuid,
        "1",
        inv.gpus[1].uuid,
        "1:0",
        inv.gpus[1].mig_devices[0].uuid,
        "1:1",
        inv.gpus[1].mig_devices[1].uuid,
        "all",
    ]
    containers = {m["containerPath"] for m in spec["containerEdits"]["mounts"]}
    assert "/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04" in containers
    assert "/usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.580.159.04" in containers
    assert {"/usr/bin/nvidia-smi", "/usr/bin/nvidia-persistenced"} <= containers
    assert {"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"} <= set(
        _links(spec)
    )
    hosts = {m["hostPath"] for m in spec["containerEdits"]["mounts"]}
    assert all(h.startswith(prefix) for h in hosts if "libcuda" in h)
    mig_nodes = next(d for d in spec["devices"] if d["name"] == "1:0")["containerEdits"]["deviceNodes"]
    assert [n["path"] for n in mig_nodes] == [
        "/dev/nvidia1",
        "/dev/nvidia-caps/nvidia-cap147",
        "/dev/nvidia-caps/nvidia-cap148",
    ]


async def test_host_path_mapping_from_agent_root_to_runtime_root(tmp_path: Path) -> None:
    # The DaemonSet sees the host at /host: the GKE driver is /host/home/kubernetes/bin/nvidia to the agent.
    assert (
        cdispec.map_path(
            "/host/home/kubernetes/bin/nvidia/lib64/libcuda.so.1",
            "/host/home/kubernetes/bin/nvidia",
            "/home/kubernetes/bin/nvidia",
        )
        == "/home/kubernetes/bin/nvidia/lib64/libcuda.so.1"
    )
    assert cdispec.map_path("/dev/nvidia0", "/host/home/kubernetes/bin/nvidia", "/x") == "/dev/nvidia0"
    host = tmp_path / "host"
    inv = sandbox.sandbox_inventory(1)
    root = prefixed_node(host, inv, "/home/kubernetes/bin/nvidia", "flat")
    _hook_binary(root)
    settings = make_settings(driver={"root": f"{host}/home/kubernetes/bin/nvidia"})
    spec = await _spec_for(make_ctx(host, inv, settings))
    libs = [m["hostPath"] for m in spec["containerEdits"]["mounts"] if "libnvidia-ml" in m["hostPath"]]
    assert libs == ["/home/kubernetes/bin/nvidia/lib64/libnvidia-ml.so.580.159.04"]
    # A runtime that sees the driver somewhere else gets that path.
    other = make_settings(driver={"root": "/home/kubernetes/bin/nvidia"}, cdi={"driver_root_in_runtime": "/opt/drv"})
    (host / "var/run/cdi/nvidia.yaml").unlink()
    moved = await _spec_for(make_ctx(host, inv, other))
    libs = [m["hostPath"] for m in moved["containerEdits"]["mounts"] if "libnvidia-ml" in m["hostPath"]]
    assert libs == ["/opt/drv/lib64/libnvidia-ml.so.580.159.04"]


async def test_hooks_point_only_at_the_configured_path(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    ctx = make_ctx(tmp_path, inv, make_settings(cdi={"hook_path": "/opt/toolkit/bin/nvidia-ctk"}))
    sandbox.populate_sandbox(ctx.root, inv)
    _hook_binary(ctx.root, "/opt/toolkit/bin/nvidia-ctk")
    spec = await _spec_for(ctx)
    hooks = spec["containerEdits"]["hooks"]
    # nvidia-ctk cdi generate's hooks, in its order (1.20's generate_test.go "default" case).
    assert [h["args"][:3] for h in hooks] == [
        ["nvidia-ctk", "hook", "create-symlinks"],
        ["nvidia-ctk", "hook", "enable-cuda-compat"],
        ["nvidia-ctk", "hook", "update-ldcache"],
        ["nvidia-ctk", "hook", "disable-device-node-modification"],
        ["nvidia-ctk", "hook", "update-application-profile"],
    ]
    assert hooks[1]["args"][3:] == ["--host-driver-version=580.159.04"]
    assert hooks[3]["args"][3:] == [] and hooks[4]["args"][3:] == []
    assert {h["path"] for h in hooks} == {"/opt/toolkit/bin/nvidia-ctk"}
    assert all(h["hookName"] == "createContainer" for h in hooks)
    for device in spec["devices"]:
        assert "hooks" not in device["containerEdits"]


def test_lowest_cdi_version_the_content_needs() -> None:
    base = {
        "kind": "nvidia.com/gpu",
        "devices": [{"name": "gpu0", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"}]}}],
    }
    assert cdispec.required_version(base) == "0.3.0"
    with_type = {**base, "containerEdits": {"mounts": [{"hostPath": "/a", "containerPath": "/a", "type": "bind"}]}}
    assert cdispec.required_version(with_type) == "0.4.0"
    digit = {**base, "devices": [{"name": "0", "containerEdits": {}}]}
    assert cdispec.required_version(digit) == "0.5.0"
    host_path = {**base, "containerEdits": {"deviceNodes": [{"path": "/dev/x", "hostPath": "/r/dev/x"}]}}
    assert cdispec.required_version(host_path) == "0.5.0"
    assert cdispec.required_version({**base, "annotations": {"a": "b"}}) == "0.6.0"
    assert cdispec.required_version({**base, "containerEdits": {"additionalGids": [44]}}) == "0.7.0"


async def test_separate_dev_root_uses_host_path(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    root = prefixed_node(tmp_path, inv, "/run/nvidia/driver", "debian")
    sandbox.write_device_placeholders(root, inv, "/run/nvidia/driver")
    _hook_binary(root)
    spec = await _spec_for(make_ctx(tmp_path, inv, make_settings(driver={"dev_root": "/run/nvidia/driver"})))
    _validate(spec)
    node = spec["devices"][0]["containerEdits"]["deviceNodes"][0]
    assert node == {"path": "/dev/nvidia0", "hostPath": "/run/nvidia/driver/dev/nvidia0"}
    assert spec["cdiVersion"] == "0.5.0"
    for host_path in cdispec.host_paths(spec):
        assert root.exists(host_path), host_path


async def test_unchanged_content_is_not_rewritten(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    await _spec_for(ctx)
    local = ctx.root.resolve(SPEC)
    first = local.stat()
    cdi = CdiSubsystem(ctx)
    plan = cdi.plan(await cdi.observe())
    assert plan.empty
    assert (await cdi.apply(plan)).changed == ()
    again = local.stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)


async def test_regenerated_when_the_mig_layout_changes(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(2)
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    spec = await _spec_for(ctx)
    assert len(spec["devices"]) == 5
    cdi = CdiSubsystem(ctx)
    await cdi.start()
    stop = asyncio.Event()
    task = asyncio.create_task(cdi.run(stop))
    try:
        await asyncio.sleep(0)
        assert isinstance(ctx.gpus, testing.FixedInventory)
        ctx.gpus.serve(sandbox.sandbox_inventory(2, mig_on=(0,)))
        await ctx.gpu_state.refresh()  # what the MIG subsystem asks of the GPU-state owner after a change
        async with asyncio.timeout(5):
            while "0:1" not in (ctx.root.read_text(SPEC) or ""):
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task
    names = [d["name"] for d in yaml.safe_load(ctx.root.read_bytes(SPEC) or b"")["devices"]]
    assert "0:0" in names and "0:1" in names


async def test_driver_not_ready_in_a_one_shot_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = sandbox.sandbox_inventory(1)
    ctx = make_ctx(tmp_path, inv)
    assert await generate_command(ctx, None) == 1
    assert "no NVIDIA driver found under /, /run/nvidia/driver" in capsys.readouterr().err
    assert not ctx.root.exists(SPEC)


async def test_generate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = sandbox.sandbox_inventory(1, mig_on=(0,))
    node = tmp_path / "node"
    ctx = make_ctx(node, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    sandbox.write_device_placeholders(ctx.root, inv)
    assert await generate_command(ctx, None) == 0
    where = f"{node}/var/run/cdi/nvidia.yaml (cdi.spec_path {SPEC})"
    assert f"\nwrote {where}: " in "\n" + capsys.readouterr().out  # where it went, on stdout (issue 23 item 25)
    assert await generate_command(ctx, None) == 0
    assert f"\nunchanged {where}: " in "\n" + capsys.readouterr().out
    out = tmp_path / "spec.json"
    assert await generate_command(ctx, str(out)) == 0
    assert f"\nwrote {out}: " in "\n" + capsys.readouterr().out
    as_json = json.loads(out.read_text())
    _validate(as_json)
    assert as_json == yaml.safe_load(ctx.root.read_bytes(SPEC) or b"")
    assert await generate_command(ctx, "-") == 0
    assert yaml.safe_load(capsys.readouterr().out) == as_json


async def test_revert_restores_what_was_there(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    ctx.root.write_atomic(SPEC, b"# hand-written\n")
    await _spec_for(ctx)
    cdi = CdiSubsystem(ctx)
    assert (await cdi.revert()).changed == (SPEC,)
    assert ctx.root.read_bytes(SPEC) == b"# hand-written\n"


async def test_cdi_waits_for_the_driver(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    ctx.board.track("driver", lambda: Status(Phase.PENDING))
    cdi = CdiSubsystem(ctx)
    await cdi.start()
    assert cdi.status().phase == Phase.STARTING and not ctx.root.exists(SPEC)
    stop = asyncio.Event()
    task = asyncio.create_task(cdi.run(stop))
    try:
        await DriverSubsystem(ctx).start()
        async with asyncio.timeout(5):
            while cdi.status().phase != Phase.RUNNING:
                await asyncio.sleep(0.01)
        assert ctx.root.exists(SPEC)
    finally:
        stop.set()
        await task


async def test_cdi_alone_discovers_the_driver_itself(tmp_path: Path) -> None:
    """With `--only cdi` no driver subsystem will ever publish readiness, so CDI must not wait for it."""
    inv = sandbox.sandbox_inventory(1)
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    cdi = CdiSubsystem(ctx)
    await cdi.start()
    assert cdi.status().phase == Phase.RUNNING and ctx.root.exists(SPEC)
