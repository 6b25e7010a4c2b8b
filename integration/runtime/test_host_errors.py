"""Host errors on real filesystems: read-only mount, immutable file, full disk, permission denied.

Each case runs the real `nodeagent apply --only runtime` on a root whose containerd config lives on a
small tmpfs mounted for the test. The error must name the path and what to do, without a traceback;
nothing is half-written (the config keeps its bytes, no temp file is left); the exit code is 1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import require

from .conftest import CONTAINERD_DEFAULT, short_tmpdir

pytestmark = [pytest.mark.integration, pytest.mark.root]
REPO = Path(__file__).parents[2]


@pytest.fixture
def node() -> Iterator[Path]:
    require(os.geteuid() == 0, "needs root (mounts a tmpfs)")
    base = short_tmpdir()
    base.chmod(0o755)
    conf_dir = base / "etc/containerd"
    conf_dir.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=755", "tmpfs", str(conf_dir)], check=False)
    require(mounted.returncode == 0, "cannot mount a tmpfs here")
    (conf_dir / "config.toml").write_bytes(CONTAINERD_DEFAULT.read_bytes())
    (base / "nodeagent.toml").write_text('version = 1\n[runtime]\ncontainerd_version = "1.6.20"\nrestart = "none"\n')
    try:
        yield base
    finally:
        subprocess.run(["chattr", "-i", str(conf_dir / "config.toml")], check=False, capture_output=True)
        subprocess.run(["umount", str(conf_dir)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def apply(base: Path, *prefix: str) -> subprocess.CompletedProcess[str]:
    argv = [*prefix, sys.executable, "-m", "nodeagent", "apply", "--only", "runtime", "--root", str(base)]
    return subprocess.run(
        [*argv, "--config", str(base / "nodeagent.toml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def check_refused(base: Path, done: subprocess.CompletedProcess[str], *words: str) -> None:
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert "Traceback" not in said, said
    for word in words:
        assert word in said, said
    conf_dir = base / "etc/containerd"
    assert (conf_dir / "config.toml").read_bytes() == CONTAINERD_DEFAULT.read_bytes()
    assert [p.name for p in conf_dir.iterdir() if p.name != "config.toml"] == []


def test_read_only_filesystem(node: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(node / "etc/containerd")], check=True)
    check_refused(node, apply(node), "/etc/containerd/config.toml", "read-only", "remount it read-write")


def test_immutable_file(node: Path) -> None:
    require(shutil.which("chattr") is not None, "chattr is not installed")
    done = subprocess.run(["chattr", "+i", str(node / "etc/containerd/config.toml")], check=False)
    require(done.returncode == 0, "this filesystem has no immutable attribute")
    check_refused(node, apply(node), "/etc/containerd/config.toml", "immutable")


def test_disk_full(node: Path) -> None:
    filler = node / "etc/containerd/filler"
    with filler.open("wb", buffering=0) as fh, pytest.raises(OSError):
        while True:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    done = apply(node)
    filler.unlink()
    check_refused(node, done, "/etc/containerd/config.toml", "No space left", "free some space")


def test_permission_denied(node: Path) -> None:
    require(shutil.which("setpriv") is not None, "setpriv is not installed")
    (node / "var/lib/nodeagent").mkdir(parents=True)
    os.chown(node / "var/lib/nodeagent", 65534, 65534)  # the journal is writable: the config is not
    done = apply(node, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    check_refused(node, done, "/etc/containerd/config.toml", "Permission denied", "run the agent as root")
