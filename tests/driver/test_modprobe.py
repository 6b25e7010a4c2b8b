"""The fake modprobe (sandbox /proc and /sys) and the real one (argv, failure, timeout)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from nodeagent.backends.hostfs import Root
from nodeagent.backends.kmod import Modprobe, ModprobeError
from nodeagent.backends.sim import sandbox
from nodeagent.backends.sim.modprobe import SimModprobe
from nodeagent.driver import devnodes, modules, versions
from nodeagent.errors import CallTimeout

VERSION = "580.159.04"


def _empty_node(path: Path) -> Root:
    root = Root(path)
    sandbox.write_kernel_state(root, sandbox.sandbox_inventory(1), modules=())
    return root


async def test_loading_uvm_pulls_in_nvidia_and_updates_proc_and_sys(tmp_path: Path) -> None:
    root = _empty_node(tmp_path)
    assert "nvidia-uvm" not in devnodes.parse_proc_devices(root.read_text("/proc/devices") or "")
    fake = SimModprobe(root, version=VERSION, inventory=sandbox.sandbox_inventory(2))
    await fake.load("nvidia-uvm")
    loaded = modules.read_loaded(root)
    assert loaded.loaded() == ("nvidia", "nvidia_uvm")
    text = root.read_text("/proc/modules") or ""
    assert [line.split()[0] for line in text.splitlines()] == ["nvidia_uvm", "nvidia"]  # newest first
    assert root.read_text("/sys/module/nvidia_uvm/initstate") == "live\n"
    assert root.read_text("/sys/module/nvidia/version") == f"{VERSION}\n"
    assert not root.exists("/sys/module/nvidia/refcnt")
    majors = devnodes.parse_proc_devices(root.read_text("/proc/devices") or "")
    assert majors["nvidia-uvm"] == 238 and majors["nvidia"] == 195
    assert versions.parse_proc_version(root.read_text("/proc/driver/nvidia/version") or "").version == VERSION
    assert len(root.listdir("/proc/driver/nvidia/gpus")) == 2
    assert root.exists("/proc/driver/nvidia/capabilities/mig/config")
    await fake.load("nvidia-uvm")  # already loaded: nothing changes
    assert root.read_text("/proc/modules") == text


async def test_fake_modprobe_failures(tmp_path: Path) -> None:
    root = _empty_node(tmp_path)
    fake = SimModprobe(root, version=VERSION, failures={"nvidia_peermem": "Invalid argument"})
    with pytest.raises(ModprobeError, match="modprobe nvidia-peermem exited 1: Invalid argument"):
        await fake.load("nvidia-peermem")
    with pytest.raises(ModprobeError, match="Module nvidia-foo not found"):
        await fake.load("nvidia-foo")
    root.write_atomic("/proc/modules", b"nouveau 2301952 0 - Live 0xffffffffc0a00000\n")
    with pytest.raises(ModprobeError, match="could not insert 'nvidia': No such device"):
        await fake.load("nvidia")
    assert fake.calls == [("nvidia-peermem", ()), ("nvidia-foo", ()), ("nvidia", ())]


def test_real_modprobe_argv(tmp_path: Path) -> None:
    assert Modprobe(Root("/"), timeout_s=5).argv("nvidia", ["NVreg_X=1"]) == ["modprobe", "nvidia", "NVreg_X=1"]
    assert Modprobe(Root(tmp_path), timeout_s=5).argv("nvidia-uvm") == [
        "chroot",
        str(tmp_path),
        "modprobe",
        "nvidia-uvm",
    ]


async def test_real_modprobe_reports_its_error() -> None:
    if shutil.which("modprobe") is None:
        pytest.skip("no modprobe on this machine")
    with pytest.raises(ModprobeError, match="nodeagent-no-such-module"):
        await Modprobe(Root("/"), timeout_s=20).load("nodeagent-no-such-module")


async def test_modprobe_timeout(tmp_path: Path) -> None:
    hang = tmp_path / "hanging-modprobe"
    hang.write_text("#!/bin/sh\nexec sleep 30\n")
    hang.chmod(0o755)
    with pytest.raises(CallTimeout):
        await Modprobe(Root("/"), timeout_s=0.3, binary=str(hang)).load("nvidia")


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_real_mknod_under_a_dev_root(tmp_path: Path) -> None:
    from nodeagent.backends.chardevs import inspect, make_node

    root = Root(tmp_path)
    make_node(root, "/run/nvidia/driver", "/dev/nvidia-uvm-tools", major=238, minor=1, mode=0o666, placeholder=False)
    state = inspect(root, "/run/nvidia/driver", "/dev/nvidia-uvm-tools")
    assert state is not None and (state.kind, state.major, state.minor) == ("char", 238, 1)
    assert (tmp_path / "run/nvidia/driver/dev/nvidia-uvm-tools").stat().st_mode & 0o777 == 0o666
    assert [p.name for p in (tmp_path / "run/nvidia/driver/dev").iterdir()] == ["nvidia-uvm-tools"]
