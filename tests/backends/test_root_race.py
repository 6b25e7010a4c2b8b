"""The Root against a hostile host: directories swapped for links mid-write, writers killed with -9."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nodeagent.backends.hostfs import Root
from nodeagent.backends.journal import BackupJournal
from nodeagent.errors import HostPathError

APPLIES = 500


def _swapper(real: Path, targets: list[str], stop: threading.Event, swaps: list[int]) -> None:
    stash = real.with_name(real.name + ".real")
    while not stop.is_set():
        for target in targets:
            try:
                real.rename(stash)
                real.symlink_to(target)
                time.sleep(0)  # let the writer run while the link is in place
                real.unlink()
                swaps[0] += 1
            except OSError:
                pass  # the writer re-created the missing directory meanwhile (inside the root)
            finally:
                _put_back(real, stash)


def _put_back(real: Path, stash: Path) -> None:
    """Restore the real directory, removing whatever the writer re-created in its place (inside the root)."""
    while stash.exists():
        try:
            if real.is_symlink() or real.is_file():
                real.unlink()
            elif real.is_dir():
                shutil.rmtree(real, ignore_errors=True)
            stash.rename(real)
        except OSError:
            continue


def test_a_directory_swapped_for_an_escaping_link_never_gets_a_byte_outside(tmp_path: Path) -> None:
    root = Root(tmp_path / "root")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.toml").write_bytes(b"SECRET outside the root\n")
    real = root.path / "etc/containerd"
    real.mkdir(parents=True)
    (real / "config.toml").write_bytes(b"version = 2\n")
    journal = BackupJournal(root, "/var/lib/nodeagent")
    # a relative link that climbs out, and an absolute one naming the real outside directory
    targets = [os.path.relpath(outside, real.parent), str(outside)]
    stop, swaps = threading.Event(), [0]
    thread = threading.Thread(target=_swapper, args=(real, targets, stop, swaps), daemon=True)
    thread.start()
    refused = written = 0
    try:
        for i in range(APPLIES):
            try:
                root.write_atomic(
                    "/etc/containerd/config.toml", f"version = 2\n# apply {i}\n".encode(), journal=journal
                )
                written += 1
            except (HostPathError, OSError):  # refused, or the directory vanished mid-swap: never outside
                refused += 1
            try:
                seen = root.read_bytes("/etc/containerd/config.toml")
            except HostPathError:
                seen = None
            assert seen is None or b"SECRET" not in seen, "a read followed the link outside the root"
    finally:
        stop.set()
        thread.join(10)
    escaped = sorted(p.name for p in outside.iterdir() if p.name != "config.toml")
    if (outside / "config.toml").read_bytes() != b"SECRET outside the root\n":
        escaped.append("config.toml (overwritten)")
    print(f"{APPLIES} applies: {written} written, {refused} refused, {swaps[0]} swaps, {len(escaped)} escapes")
    assert escaped == []
    assert swaps[0] > 0 and written > 0


WRITER = """
import sys
from nodeagent.backends.hostfs import Root
from nodeagent.backends.journal import BackupJournal
root = Root(sys.argv[1])
journal = BackupJournal(root, "/var/lib/nodeagent")
big = [b"version = 2\\n" + bytes([65 + n]) * 300_000 + b"\\n" for n in range(2)]
print("ready", flush=True)
i = 0
while True:  # apply, apply, revert, ...
    if i % 3 == 2:
        journal.restore(root, "/etc/containerd/config.toml", force=True)
    else:
        root.write_atomic("/etc/containerd/config.toml", big[i % 2], journal=journal)
    i += 1
"""


@pytest.mark.parametrize("round_", range(20))
def test_kill_9_during_apply_and_revert_leaves_whole_files_and_the_next_start_sweeps_temp_files(
    tmp_path: Path, round_: int
) -> None:
    root = Root(tmp_path / "root")
    (root.path / "etc/containerd").mkdir(parents=True)
    original = b"version = 2\n# original\n"
    (root.path / "etc/containerd/config.toml").write_bytes(original)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root.path)], stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": "."}
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(random.Random(round_).uniform(0.01, 0.25))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    data = (root.path / "etc/containerd/config.toml").read_bytes()
    assert data == original or (len(data) == 300_013 and data[12:13] * 300_000 == data[12:300_012])
    journal = BackupJournal(root, "/var/lib/nodeagent")
    entries = journal.entries()  # the index is whole (never torn), whatever the moment of the kill
    if "/etc/containerd/config.toml" in entries:
        assert journal.original("/etc/containerd/config.toml") == original
    for directory in ("/etc/containerd", "/var/lib/nodeagent/backups"):
        root.sweep_temp_files(directory)  # what the next start does
    leftovers = [p.name for p in root.path.rglob("*nodeagent-tmp")]
    assert leftovers == []
