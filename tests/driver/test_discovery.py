"""Driver root discovery for each layout, with its evidence; partial and absent drivers."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.backends.hostfs import Root
from nodeagent.backends.sim import sandbox
from nodeagent.driver import discovery

VERSION = "580.159.04"


@pytest.mark.parametrize(
    ("prefix", "layout", "libdir", "bindir"),
    [
        ("/", "debian", "/usr/lib/x86_64-linux-gnu", "/usr/bin"),
        ("/run/nvidia/driver", "debian", "/run/nvidia/driver/usr/lib/x86_64-linux-gnu", "/run/nvidia/driver/usr/bin"),
        ("/home/kubernetes/bin/nvidia", "flat", "/home/kubernetes/bin/nvidia/lib64", "/home/kubernetes/bin/nvidia/bin"),
        ("/usr/local/nvidia", "flat", "/usr/local/nvidia/lib64", "/usr/local/nvidia/bin"),
    ],
)
def test_each_layout_is_found_with_evidence(
    tmp_path: Path, prefix: str, layout: sandbox.Layout, libdir: str, bindir: str
) -> None:
    root = Root(tmp_path)
    sandbox.write_driver_files(root, prefix, VERSION, layout=layout)
    sel = discovery.select_root(root)
    assert sel.files is not None and sel.reason == ""
    assert sel.files.root == prefix
    assert sel.files.layout == layout
    assert sel.files.library_version == VERSION
    ml = sel.files.library("libnvidia-ml")
    assert ml is not None and ml.path == f"{libdir}/libnvidia-ml.so.{VERSION}"
    assert ml.links == ("libnvidia-ml.so.1", "libnvidia-ml.so")
    assert f"{bindir}/nvidia-smi" in sel.files.binaries
    assert any("gsp_ga10x.bin" in fw for fw in sel.files.firmware)
    assert sel.evidence[0].startswith(f"driver root {prefix} (first candidate holding a driver, {layout} layout)")
    assert any(f"libnvidia-ml: {libdir}/libnvidia-ml.so.{VERSION}" in e for e in sel.evidence)
    # every candidate before the chosen one says why it was passed over
    skipped = discovery.CANDIDATE_ROOTS[: discovery.CANDIDATE_ROOTS.index(prefix)]
    for other in skipped:
        assert any(e.startswith(f"{other}: ") and ("absent" in e or "no libnvidia-ml" in e) for e in sel.evidence)


def test_real_usr_local_nvidia_listing(tmp_path: Path) -> None:
    from tests.driver.fakes import real_usr_local_nvidia

    root = real_usr_local_nvidia(tmp_path)
    sel = discovery.select_root(root)
    assert sel.files is not None and sel.reason == ""
    files = sel.files
    assert files.root == "/usr/local/nvidia" and files.layout == "flat"
    # lib -> lib64 is one directory, listed once
    assert all(lib.path.startswith("/usr/local/nvidia/lib64/") for lib in files.libraries)
    assert len(files.libraries) == 26
    cuda = files.library("libcuda")
    assert cuda is not None and set(cuda.links) == {"libcuda.so.1", "libcuda.so"}
    assert files.binaries[0] == "/usr/local/nvidia/bin/nvidia-smi"
    assert "/usr/local/nvidia/bin/nvidia-persistenced" in files.binaries
    assert files.firmware == ()  # that machine keeps no firmware under its driver root
    assert not any("glibc" in lib.path for lib in files.libraries)


def test_host_root_wins_over_later_candidates(tmp_path: Path) -> None:
    root = Root(tmp_path)
    sandbox.write_driver_files(root, "/", VERSION)
    sandbox.write_driver_files(root, "/usr/local/nvidia", "550.54.15", layout="flat")
    sel = discovery.select_root(root)
    assert sel.files is not None and sel.files.root == "/"


def test_configured_root_is_used_alone_and_accepts_the_agent_view(tmp_path: Path) -> None:
    root = Root(tmp_path)
    sandbox.write_driver_files(root, "/", VERSION)
    sandbox.write_driver_files(root, "/home/kubernetes/bin/nvidia", VERSION, layout="flat")
    # given as the DaemonSet sees it (host root prefix included)
    sel = discovery.select_root(root, f"{tmp_path}/home/kubernetes/bin/nvidia")
    assert sel.files is not None and sel.files.root == "/home/kubernetes/bin/nvidia"
    assert "configured" in sel.evidence[0]
    empty = discovery.select_root(root, "/opt/nothing")
    assert empty.files is None
    assert empty.reason == "no NVIDIA driver found under /opt/nothing"


def test_no_driver_anywhere(tmp_path: Path) -> None:
    sel = discovery.select_root(Root(tmp_path))
    assert sel.files is None
    assert sel.reason.startswith("no NVIDIA driver found under /, /run/nvidia/driver")
    assert len(sel.evidence) == len(discovery.CANDIDATE_ROOTS)


def test_partial_driver_root_names_what_is_missing(tmp_path: Path) -> None:
    root = Root(tmp_path)
    libs = [lib for lib in sandbox.DRIVER_LIBS if lib.stem not in ("libcuda", "libnvidia-ptxjitcompiler")]
    sandbox.write_driver_files(root, "/usr/local/nvidia", VERSION, layout="flat", libs=libs, bins=())
    sel = discovery.select_root(root)
    assert sel.files is not None
    assert sel.reason == (
        f"driver root /usr/local/nvidia holds only part of a driver: missing libcuda.so.{VERSION}, "
        f"libnvidia-ptxjitcompiler.so.{VERSION}, nvidia-smi (an interrupted install or a wrong driver.root)"
    )


def test_only_nvidia_smi_without_libraries_is_partial(tmp_path: Path) -> None:
    root = Root(tmp_path)
    sandbox.write_driver_files(root, "/", VERSION, libs=())
    sel = discovery.select_root(root)
    assert sel.files is not None and sel.files.library_version == ""
    assert "missing libnvidia-ml.so.<version>, libcuda.so.<version>" in sel.reason


def test_stray_library_versions_are_reported(tmp_path: Path) -> None:
    root = Root(tmp_path)
    sandbox.write_driver_files(root, "/", VERSION)
    (tmp_path / "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.15").write_bytes(b"old")
    sel = discovery.select_root(root)
    assert sel.files is not None
    assert sel.files.library_version == VERSION  # what libnvidia-ml.so.1 points at
    assert sel.files.stray_versions == ("550.54.15",)
