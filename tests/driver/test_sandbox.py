"""The simulated node's sandbox tree: populated once, in the real capture's formats."""

from __future__ import annotations

from pathlib import Path

from nodeagent.backends.chardevs import parse_placeholder, placeholder_bytes
from nodeagent.backends.hostfs import Root
from nodeagent.backends.sim.sandbox import populate_sandbox, sandbox_inventory

FIXTURE_TOML = Path(__file__).parents[2] / "nodeagent/backends/sim/data/containerd-1.6.20-default.toml"


def test_populates_a_new_folder_like_a_gpu_node(tmp_path: Path) -> None:
    root = Root(tmp_path / "sim")
    inv = sandbox_inventory(3, mig_on=(2,))
    assert populate_sandbox(root, inv) is True

    assert root.read_bytes("/etc/containerd/config.toml") == FIXTURE_TOML.read_bytes()
    version = root.read_text("/proc/driver/nvidia/version") or ""
    assert version.startswith("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build")
    assert root.read_text("/sys/module/nvidia/version") == "580.159.04\n"
    assert root.read_text("/sys/module/nvidia/initstate") == "live\n"
    assert not root.exists("/sys/module/nvidia/refcnt")
    modules = root.read_text("/proc/modules") or ""
    assert [line.split()[0] for line in modules.splitlines()] == ["nvidia_modeset", "nvidia_uvm", "nvidia"]
    assert all(line.split()[4] == "Live" for line in modules.splitlines())
    devices = root.read_text("/proc/devices") or ""
    assert "195 nvidia\n" in devices and "238 nvidia-uvm\n" in devices and "241 nvidia-caps\n" in devices

    for gpu in inv.gpus:
        info = root.read_text(f"/proc/driver/nvidia/gpus/0000:{gpu.pci_bus_id[9:].lower()}/information") or ""
        assert f"GPU UUID: \t {gpu.uuid}\n" in info
        assert f"Device Minor: \t {gpu.minor_number}\n" in info
        assert parse_placeholder(root.read_bytes(f"/dev/nvidia{gpu.minor_number}") or b"") == (195, gpu.minor_number)
    assert parse_placeholder(root.read_bytes("/dev/nvidiactl") or b"") == (195, 255)
    assert parse_placeholder(root.read_bytes("/dev/nvidia-uvm-tools") or b"") == (238, 1)
    assert parse_placeholder(root.read_bytes("/dev/nvidia-caps/nvidia-cap1") or b"") == (241, 1)

    caps = "/proc/driver/nvidia/capabilities"
    assert "DeviceFileMinor: 1\n" in (root.read_text(f"{caps}/mig/config") or "")
    assert "DeviceFileMinor: 2\n" in (root.read_text(f"{caps}/mig/monitor") or "")
    # gpu2 has MIG devices at GI 1 and 2: minors per /proc/driver/nvidia-caps/mig-minors numbering.
    assert "DeviceFileMinor: 282\n" in (root.read_text(f"{caps}/gpu2/mig/gi1/access") or "")
    assert "DeviceFileMinor: 283\n" in (root.read_text(f"{caps}/gpu2/mig/gi1/ci0/access") or "")

    lib = "/usr/lib/x86_64-linux-gnu"
    assert root.is_file(f"{lib}/libnvidia-ml.so.580.159.04")
    assert root.resolve(f"{lib}/libnvidia-ml.so.1") == root.resolve(f"{lib}/libnvidia-ml.so.580.159.04")
    assert root.resolve(f"{lib}/libcuda.so") == root.resolve(f"{lib}/libcuda.so.580.159.04")
    assert root.is_file(f"{lib}/libnvidia-ptxjitcompiler.so.580.159.04")
    assert root.is_file("/usr/bin/nvidia-smi") and root.is_file("/usr/bin/nvidia-persistenced")
    assert root.is_file("/lib/firmware/nvidia/580.159.04/gsp_ga10x.bin")
    assert root.read_text("/proc/1841/comm") == "nvidia-persiste\n"
    assert root.is_dir("/var/run/cdi") and root.is_dir("/run/nvidia/validations")


def test_existing_non_empty_root_is_left_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("my own node\n")
    assert populate_sandbox(Root(tmp_path), sandbox_inventory(1)) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_existing_empty_folder_is_populated(tmp_path: Path) -> None:
    assert populate_sandbox(Root(tmp_path), sandbox_inventory(1, driver_version="550.54.15")) is True
    assert Root(tmp_path).read_text("/sys/module/nvidia/version") == "550.54.15\n"
    assert Root(tmp_path).is_file("/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15")


def test_placeholder_round_trip() -> None:
    assert parse_placeholder(placeholder_bytes(241, 4323)) == (241, 4323)
    assert parse_placeholder(b"\x7fELF garbage") is None
    assert parse_placeholder(b"char x:1\n") is None
