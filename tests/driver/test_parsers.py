"""Parsers of /proc and /sys files, on the real H100 captures and on garbage."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.driver import devnodes, modules, versions
from nodeagent.errors import ConfigError

DATA = Path(__file__).parent / "data"


def test_proc_modules_of_a_kernel_without_unloading() -> None:
    parsed = modules.parse_proc_modules((DATA / "proc-modules.txt").read_text())
    assert set(parsed) == {"nvidia", "nvidia_uvm"}
    assert parsed["nvidia"].refcount is None and parsed["nvidia"].state == "Live"
    assert parsed["nvidia_uvm"].size == 1830912


def test_proc_modules_with_refcounts_and_users() -> None:
    text = (
        "nvidia_uvm 1441792 2 - Live 0xffffffffc1a00000 (PO)\nnvidia 56717312 49 nvidia_uvm,nvidia_modeset, Live 0x0\n"
    )
    parsed = modules.parse_proc_modules(text)
    assert parsed["nvidia"].refcount == 49
    assert parsed["nvidia"].used_by == ("nvidia_uvm", "nvidia_modeset")


@pytest.mark.parametrize("garbage", ["nvidia Live", "nvidia big - - Live 0x0", "\x00\x01\x02 x y z w"])
def test_proc_modules_garbage_names_file_and_line(garbage: str) -> None:
    with pytest.raises(ConfigError) as err:
        modules.parse_proc_modules("nvidia 14299136 - - Live 0x0 (O)\n" + garbage + "\n")
    assert str(err.value).startswith("/proc/modules:2: not a /proc/modules line")


def test_loaded_by_initstate_alone() -> None:
    loaded = modules.LoadedModules({}, {"nvidia": "live", "nvidia_uvm": "coming"})
    assert loaded.is_loaded("nvidia")
    assert not loaded.is_loaded("nvidia-uvm")


def test_load_order_and_params() -> None:
    none = modules.LoadedModules({}, {})
    loads = modules.plan_loads(none, rdma=True, params={"nvidia": ["NVreg_EnableGpuFirmware=1"], "nvidia_uvm": ["x=1"]})
    assert [load.module for load in loads] == ["nvidia", "nvidia-uvm", "nvidia-modeset", "nvidia-peermem"]
    assert loads[0].command == "modprobe nvidia NVreg_EnableGpuFirmware=1"
    assert loads[1].params == ("x=1",)
    some = modules.LoadedModules({}, {"nvidia": "live"})
    assert [load.module for load in modules.plan_loads(some, rdma=False)] == ["nvidia-uvm", "nvidia-modeset"]


def test_nouveau_is_a_failure_that_says_how_to_blacklist_it() -> None:
    nouveau = modules.LoadedModules({}, {"nouveau": "live"})
    problem = modules.nouveau_problem(nouveau)
    assert problem is not None
    assert "nouveau" in problem and "blacklist nouveau" in problem and "/etc/modprobe.d/" in problem
    assert modules.nouveau_problem(modules.LoadedModules({}, {})) is None


def test_proc_version_of_the_real_driver() -> None:
    kv = versions.parse_proc_version((DATA / "proc-driver-nvidia-version.txt").read_text())
    assert kv.version == "580.159.04" and kv.open_modules
    closed = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
    assert versions.parse_proc_version(closed.replace("x86_64 Kernel", "Kernel")).version == "535.104.05"


@pytest.mark.parametrize(
    "garbage", ["", "hello world\n", "NVRM version: NVIDIA UNIX Kernel Module  abc.def\n", "\xff\xfe"]
)
def test_proc_version_garbage(garbage: str) -> None:
    with pytest.raises(ConfigError) as err:
        versions.parse_proc_version(garbage)
    assert str(err.value).startswith("/proc/driver/nvidia/version:1: no NVRM version")


def test_sys_version_garbage() -> None:
    assert versions.parse_sys_version("580.159.04\n") == "580.159.04"
    with pytest.raises(ConfigError, match=r"^/sys/module/nvidia/version:1: not a driver version"):
        versions.parse_sys_version("live\n")


def test_version_mismatch_is_named_with_its_cause() -> None:
    check = versions.check_versions("580.159.04", "580.126.09")
    assert not check.ok
    assert check.problems[0].startswith(
        "driver/library version mismatch: kernel module 580.159.04, libnvidia-ml 580.126.09 ("
    )
    assert "reload the nvidia modules" in check.problems[0]


def test_minimum_version() -> None:
    assert versions.check_versions("550.54.15", "550.54.15", min_version="550").ok
    old = versions.check_versions("535.104.05", "535.104.05", min_version="550.54.15")
    assert old.problems == ("driver 535.104.05 is older than the minimum 550.54.15 (driver.min_version)",)


def test_proc_and_sys_versions_disagree() -> None:
    check = versions.check_versions("580.159.04", "580.159.04", sys_version="580.126.09")
    assert "a module reload is half done" in check.problems[0]


def test_nvml_version_drops_the_cuda_major() -> None:
    assert versions.nvml_library_version("13.580.159.04") == "580.159.04"


def test_proc_devices_of_the_real_host() -> None:
    majors = devnodes.parse_proc_devices((DATA / "proc-devices.txt").read_text())
    assert majors["nvidia"] == 195 and majors["nvidia-uvm"] == 238 and majors["nvidia-caps"] == 241
    assert majors["nvidia-caps-imex-channels"] == 242
    assert "virtblk" not in majors  # block devices are another namespace
    assert devnodes.frontend_major({"nvidia-frontend": 195}) == 195


def test_proc_devices_garbage() -> None:
    with pytest.raises(ConfigError, match=r"^/proc/devices:3: not a /proc/devices line"):
        devnodes.parse_proc_devices("Character devices:\n195 nvidia\nnvidia-uvm two-three-eight\n")


def test_wanted_nodes_from_majors_and_capabilities() -> None:
    caps = [devnodes.Capability("/proc/driver/nvidia/capabilities/mig/config", 1, 256)]
    nodes = devnodes.wanted_nodes({"nvidia": 195, "nvidia-uvm": 238, "nvidia-caps": 241}, [0], caps, modeset=False)
    assert [(n.path, n.major, n.minor, n.mode) for n in nodes] == [
        ("/dev/nvidia0", 195, 0, 0o666),
        ("/dev/nvidiactl", 195, 255, 0o666),
        ("/dev/nvidia-uvm", 238, 0, 0o666),
        ("/dev/nvidia-uvm-tools", 238, 1, 0o666),
        ("/dev/nvidia-caps/nvidia-cap1", 241, 1, 0o400),
    ]


def test_capability_file_garbage() -> None:
    with pytest.raises(ConfigError, match="x/access: no numeric DeviceFileMinor line"):
        devnodes.parse_capability("DeviceFileMinor: many\n", "x/access")
