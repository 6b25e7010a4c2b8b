"""The nodeagent image, built once per test session with container/build.sh (buildah, a debootstrapped Debian
base) into its own buildah storage under a temporary directory, and exported as an OCI archive that a test
containerd imports (integration/deploy runs it as the DaemonSet would; integration/cluster runs the
DaemonSet itself on the real kubelet). The session fixture is in integration/conftest.py, so both suites
share one build.

Set NODEAGENT_BASE_CACHE to a directory to keep the debootstrapped base between runs (keyed by the
recipe, see container/base/rootfs.sh); CI starts cold.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from integration.runtime.conftest import need_root_and, remove_tree, short_tmpdir
from tests.support import require

REPO = Path(__file__).parents[1]
TAG = "localhost/nodeagent:it"


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    archive: Path
    entrypoint: list[str]
    compressed_bytes: int
    """What a node pulls: the layers as stored (gzip)."""
    unpacked_bytes: int
    """The layers' contents, what the image takes on the node's disk."""
    build_s: float
    files: frozenset[str]
    """Every regular file of every layer, as a path without the leading ``/`` (``opt/nodeagent/...``)."""


def _layers(archive: Path) -> tuple[dict[str, object], int, int, frozenset[str]]:
    """Image config, compressed and uncompressed size, and the regular files of the layers of an oci-archive."""
    with tarfile.open(archive) as tar:

        def blob(digest: str) -> bytes:
            member = tar.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
            assert member is not None
            return member.read()

        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        compressed = sum(layer["size"] for layer in manifest["layers"])
        unpacked = 0
        files: set[str] = set()
        for layer in manifest["layers"]:
            data = blob(layer["digest"])
            if layer["mediaType"].endswith("gzip"):
                data = gzip.decompress(data)
            unpacked += len(data)
            with tarfile.open(fileobj=io.BytesIO(data)) as contents:
                files |= {m.name.removeprefix("./").lstrip("/") for m in contents.getmembers() if m.isfile()}
    return config, compressed, unpacked, frozenset(files)


def build_image() -> Iterator[BuiltImage]:
    """Build the image (skipped where buildah or debootstrap are missing), yield it, remove it."""
    need_root_and("buildah", "debootstrap", "containerd", "ctr", "runc")
    require(Path("/usr/share/keyrings/debian-archive-keyring.gpg").exists(), "debian-archive-keyring is missing")
    work = short_tmpdir()
    archive = work / "nodeagent.oci.tar"
    storage = work / "buildah"
    started = time.monotonic()
    try:
        done = subprocess.run(
            [str(REPO / "container/build.sh"), "--tag", TAG, "--storage", str(storage), "--archive", str(archive)],
            env={**os.environ, "PYTHON": sys.executable},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert done.returncode == 0, f"container/build.sh failed:\n{done.stdout}\n{done.stderr}"
        build_s = time.monotonic() - started
        config, compressed, unpacked, files = _layers(archive)
        entrypoint = config["config"]["Entrypoint"]  # type: ignore[index]
        print(f"\n{done.stdout}image built in {build_s:.0f} s")
        yield BuiltImage(TAG, archive, list(entrypoint), compressed, unpacked, build_s, files)
    finally:
        subprocess.run(
            [
                "buildah",
                "--storage-driver",
                "vfs",
                "--root",
                f"{storage}/root",
                "--runroot",
                f"{storage}/run",
                "rmi",
                "--all",
                "--force",
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
        remove_tree(work)
