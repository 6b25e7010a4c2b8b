"""CDI parity with nvidia-ctk's generated spec: DRM nodes and by-path links per GPU, graphics files,
the library directory by architecture. Expected paths and link forms are nvidia-ctk's (its
internal/discover/graphics.go and cdi generate tests), as facts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

from nodeagent.backends.hostfs import Root
from nodeagent.backends.sim import sandbox
from nodeagent.cdi import graphics
from nodeagent.cdi import spec as cdispec
from nodeagent.cdi.subsystem import CdiSubsystem
from nodeagent.driver.subsystem import DriverSubsystem
from nodeagent.model.driver import DriverFacts, DriverFiles, DriverLibrary
from nodeagent.model.gpu import Inventory
from tests.cdi.test_spec import SCHEMA
from tests.driver.fakes import make_ctx

VERSION = "580.159.04"
LIB = "/usr/lib/x86_64-linux-gnu"


def _file(root: Root, path: str, data: bytes = b"x") -> None:
    root.write_atomic(path, data, mode=0o644)


def _link(root: Root, path: str, target: str) -> None:
    local = root.resolve(path, follow_last=False)
    local.parent.mkdir(parents=True, exist_ok=True)
    local.symlink_to(target)


def graphics_node(root: Root, inv: Inventory) -> None:
    """DRM nodes for GPU 0 only (GPU 1 has none, as with a display-less board), graphics files."""
    bus = graphics.sysfs_bus_id(inv.gpus[0].pci_bus_id)
    for name in ("card1", "renderD128"):
        root.resolve(f"/sys/bus/pci/devices/{bus}/drm/{name}").mkdir(parents=True)
        _file(root, f"/dev/dri/{name}")
    _link(root, f"/dev/dri/by-path/pci-{bus}-card", "../card1")
    _link(root, f"/dev/dri/by-path/pci-{bus}-render", "../renderD128")
    _link(root, "/dev/dri/by-path/pci-0000:99:00.0-card", "../card0")  # another vendor's GPU: left out
    _file(root, "/usr/share/glvnd/egl_vendor.d/10_nvidia.json")
    _file(root, "/usr/share/egl/egl_external_platform.d/15_nvidia_gbm.json")
    _file(root, "/etc/vulkan/icd.d/nvidia_icd.json")
    _file(root, "/usr/share/vulkan/implicit_layer.d/nvidia_layers.json")  # found below /usr/share, mounted in /etc
    _file(root, f"{LIB}/libnvidia-egl-gbm.so.1.1.2")
    _file(root, f"{LIB}/libnvidia-allocator.so.{VERSION}")
    _file(root, f"{LIB}/nvidia/xorg/nvidia_drv.so")
    _file(root, f"{LIB}/nvidia/xorg/libglxserver_nvidia.so.{VERSION}")


async def _spec(tmp_path: Path, inv: Inventory, *, with_graphics: bool) -> tuple[Root, dict[str, Any]]:
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    ctx.root.write_atomic("/usr/bin/nvidia-cdi-hook", b"#!/bin/sh\n", mode=0o755)
    if with_graphics:
        graphics_node(ctx.root, inv)
    await DriverSubsystem(ctx).start()
    cdi = CdiSubsystem(ctx)
    await cdi.start()
    assert cdi.status().ready, cdi.status().reason
    data = ctx.root.read_bytes(ctx.settings.cdi.spec_path)
    assert data is not None
    return ctx.root, yaml.safe_load(data)


def _device(spec: dict[str, Any], name: str) -> dict[str, Any]:
    edits: dict[str, Any] = next(d for d in spec["devices"] if d["name"] == name)["containerEdits"]
    return edits


async def test_drm_nodes_by_path_links_and_graphics_files(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(2)
    root, spec = await _spec(tmp_path, inv, with_graphics=True)
    jsonschema.validate(spec, SCHEMA)
    bus = graphics.sysfs_bus_id(inv.gpus[0].pci_bus_id)
    assert bus == "0000:" + inv.gpus[0].pci_bus_id.split(":", 1)[1].lower()
    gpu0 = _device(spec, "0")
    assert [n["path"] for n in gpu0["deviceNodes"]] == ["/dev/nvidia0", "/dev/dri/card1", "/dev/dri/renderD128"]
    (hook,) = gpu0["hooks"]
    assert hook["args"] == [
        "nvidia-cdi-hook",
        "create-symlinks",
        "--link",
        f"../card1::/dev/dri/by-path/pci-{bus}-card",
        "--link",
        f"../renderD128::/dev/dri/by-path/pci-{bus}-render",
    ]
    assert _device(spec, inv.gpus[0].uuid) == gpu0
    gpu1 = _device(spec, "1")
    assert [n["path"] for n in gpu1["deviceNodes"]] == ["/dev/nvidia1"] and "hooks" not in gpu1
    everything = _device(spec, "all")
    assert "/dev/dri/renderD128" in [n["path"] for n in everything["deviceNodes"]]
    assert everything["hooks"][0]["args"][2:] == hook["args"][2:]

    mounts = {m["containerPath"]: m["hostPath"] for m in spec["containerEdits"]["mounts"]}
    assert mounts["/usr/share/glvnd/egl_vendor.d/10_nvidia.json"] == "/usr/share/glvnd/egl_vendor.d/10_nvidia.json"
    assert "/usr/share/egl/egl_external_platform.d/15_nvidia_gbm.json" in mounts
    assert mounts["/etc/vulkan/icd.d/nvidia_icd.json"] == "/etc/vulkan/icd.d/nvidia_icd.json"
    assert mounts["/etc/vulkan/implicit_layer.d/nvidia_layers.json"] == (
        "/usr/share/vulkan/implicit_layer.d/nvidia_layers.json"
    )
    assert f"{LIB}/libnvidia-egl-gbm.so.1.1.2" in mounts
    assert f"{LIB}/nvidia/xorg/nvidia_drv.so" in mounts
    links = [a for h in spec["containerEdits"]["hooks"] for a in h["args"] if "::" in a]
    assert f"../libnvidia-allocator.so.1::{LIB}/gbm/nvidia-drm_gbm.so" in links
    assert f"libglxserver_nvidia.so.{VERSION}::{LIB}/nvidia/xorg/libglxserver_nvidia.so" in links
    for host_path in cdispec.host_paths(spec):
        assert root.exists(host_path), host_path


async def test_without_graphics_the_spec_has_none(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    _root, spec = await _spec(tmp_path, inv, with_graphics=False)
    assert not any("/dev/dri" in n["path"] for d in spec["devices"] for n in d["containerEdits"]["deviceNodes"])
    assert not any("glvnd" in m["containerPath"] for m in spec["containerEdits"]["mounts"])
    assert all("hooks" not in d["containerEdits"] for d in spec["devices"])


def _facts(lib_dir: str) -> DriverFacts:
    libs = (DriverLibrary(f"{lib_dir}/libcuda.so.{VERSION}", ("libcuda.so.1",)),)
    files = DriverFiles(root="/", layout="debian", library_version=VERSION, libraries=libs)
    return DriverFacts(
        files=files,
        root_in_runtime="/",
        root_in_agent="/",
        dev_root="/",
        dev_root_in_agent="/",
        kernel_version="6.8.0",
        open_modules=True,
        modules=("nvidia",),
        device_nodes=("/dev/nvidiactl",),
    )


def test_library_directory_follows_the_architecture() -> None:
    """A Grace (aarch64) node's libraries go to /usr/lib/aarch64-linux-gnu, not a fixed x86_64 path."""
    inv = sandbox.sandbox_inventory(1)
    facts = _facts("/usr/lib/aarch64-linux-gnu")
    arch = cdispec.arch_of(facts, "x86_64")
    assert arch == "aarch64"
    spec = cdispec.generate(facts, inv, cdispec.CdiOptions(arch=arch))
    edits = spec["containerEdits"]
    assert edits["mounts"][0]["containerPath"] == f"/usr/lib/aarch64-linux-gnu/libcuda.so.{VERSION}"
    assert "NVIDIA_CTK_LIBCUDA_DIR=/usr/lib/aarch64-linux-gnu" in edits["env"]
    ldcache = next(h for h in edits["hooks"] if h["args"][1] == "update-ldcache")
    assert ldcache["args"][2:] == ["--folder", "/usr/lib/aarch64-linux-gnu"]
    # A flat driver root (lib64) says nothing: the machine decides.
    assert cdispec.arch_of(_facts("/usr/local/nvidia/lib64"), "arm64") == "aarch64"
    assert cdispec.arch_of(_facts("/usr/local/nvidia/lib64"), "x86_64") == "x86_64"
