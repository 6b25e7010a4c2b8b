"""Root resolution, atomic writes under injected failures, and the backup journal."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.backends.hostfs import Root, atomic_write
from nodeagent.backends.journal import BackupJournal
from nodeagent.errors import HostPathError


@pytest.fixture(name="root")
def _root(tmp_path: Path) -> Root:
    (tmp_path / "host" / "etc").mkdir(parents=True)
    return Root(tmp_path / "host")


def test_paths_resolve_under_the_root(root: Root) -> None:
    assert root.resolve("/etc/containerd/config.toml") == root.path / "etc/containerd/config.toml"
    assert root.host_path(root.path / "etc" / "x") == "/etc/x"


def test_dotdot_cannot_climb_above_the_root(root: Root) -> None:
    with pytest.raises(HostPathError, match="climbs above the root"):
        root.resolve("/../../etc/passwd")
    assert root.resolve("/etc/../etc/x") == root.path / "etc/x"


def test_relative_symlink_escaping_the_root_is_refused(root: Root) -> None:
    (root.path / "etc" / "evil").symlink_to("../../../../../../etc/passwd")
    with pytest.raises(HostPathError, match="climbs above the root"):
        root.resolve("/etc/evil")
    assert root.read_bytes is not None
    with pytest.raises(HostPathError):
        root.write_atomic("/etc/evil", b"x")


def test_absolute_symlink_is_taken_inside_the_root_like_a_chroot(root: Root) -> None:
    (root.path / "var" / "lib").mkdir(parents=True)
    (root.path / "var" / "lib" / "real.toml").write_text("inside")
    (root.path / "etc" / "config.toml").symlink_to("/var/lib/real.toml")
    assert root.read_text("/etc/config.toml") == "inside"
    # A link to the machine's real /etc/passwd lands inside the root, never on the real file.
    (root.path / "etc" / "passwd-link").symlink_to("/etc/passwd")
    assert root.resolve("/etc/passwd-link") == root.path / "etc" / "passwd"


def test_symlink_loops_are_refused(root: Root) -> None:
    (root.path / "etc" / "a").symlink_to("b")
    (root.path / "etc" / "b").symlink_to("a")
    with pytest.raises(HostPathError, match="too many levels"):
        root.resolve("/etc/a")


def test_reading_a_directory_is_a_clear_error(root: Root) -> None:
    with pytest.raises(HostPathError, match="is a directory"):
        root.read_bytes("/etc")
    assert root.read_bytes("/etc/absent") is None


def test_write_atomic_keeps_mode_and_reports_unchanged(root: Root) -> None:
    target = root.path / "etc" / "f"
    target.write_bytes(b"old")
    target.chmod(0o600)
    assert root.write_atomic("/etc/f", b"new") is True
    assert target.read_bytes() == b"new" and (target.stat().st_mode & 0o777) == 0o600
    assert root.write_atomic("/etc/f", b"new") is False


@pytest.mark.parametrize("step", ["written", "synced", "renamed"])
def test_failure_at_any_step_leaves_old_or_new_and_no_temp_files(tmp_path: Path, step: str) -> None:
    target = tmp_path / "config.toml"
    target.write_bytes(b"original")

    def fault(at: str) -> None:
        if at == step:
            raise OSError(f"injected failure after {at}")

    with pytest.raises(OSError, match="injected"):
        atomic_write(target, b"replacement", fault=fault)
    expected = b"replacement" if step == "renamed" else b"original"
    assert target.read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_journal_keeps_the_first_original_and_restores_bytes_and_mode(root: Root) -> None:
    journal = BackupJournal(root, "/var/lib/nodeagent")
    target = root.path / "etc" / "daemon.json"
    target.write_bytes(b'{"a": 1}\n')
    target.chmod(0o640)
    root.write_atomic("/etc/daemon.json", b'{"a": 2}\n', journal=journal)
    root.write_atomic("/etc/daemon.json", b'{"a": 3}\n', journal=journal)
    assert journal.original("/etc/daemon.json") == b'{"a": 1}\n'
    # The journal survives a restart of the agent: a new object reads the same state.
    again = BackupJournal(root, "/var/lib/nodeagent")
    assert again.restore(root, "/etc/daemon.json") is True
    assert target.read_bytes() == b'{"a": 1}\n' and (target.stat().st_mode & 0o777) == 0o640
    assert list(again.paths()) == []
    assert [p.name for p in root.resolve("/var/lib/nodeagent/backups").iterdir()] == ["index.json"]


def test_journal_removes_files_the_agent_created(root: Root) -> None:
    journal = BackupJournal(root, "/var/lib/nodeagent")
    root.write_atomic("/etc/crio/crio.conf.d/99-nvidia.conf", b"x", journal=journal)
    assert journal.original("/etc/crio/crio.conf.d/99-nvidia.conf") is None
    assert journal.restore(root, "/etc/crio/crio.conf.d/99-nvidia.conf") is True
    assert not (root.path / "etc/crio/crio.conf.d/99-nvidia.conf").exists()


def test_corrupt_journal_is_a_clear_error(root: Root) -> None:
    journal = BackupJournal(root, "/var/lib/nodeagent")
    index = root.resolve("/var/lib/nodeagent/backups/index.json")
    index.parent.mkdir(parents=True)
    index.write_text("{not json")
    with pytest.raises(HostPathError, match=r"/var/lib/nodeagent/backups/index\.json: backup journal unreadable"):
        journal.entries()


class WatchingJournal(BackupJournal):
    """A journal that notes, each time it is asked to keep an original, whether the file was still there."""

    def __init__(self, root: Root, state_dir: str) -> None:
        super().__init__(root, state_dir)
        self.asked: list[tuple[str, bool]] = []

    def prepare(self, root: Root, host_path: str, data: bytes | None) -> tuple[bool, str | None]:
        self.asked.append((host_path, root.exists(host_path)))
        return super().prepare(root, host_path, data)


def test_remove_records_first(root: Root) -> None:
    journal = WatchingJournal(root, "/state")
    (root.path / "etc" / "gone").write_bytes(b"bytes")
    assert root.remove("/etc/gone", journal=journal) is True
    assert journal.asked == [("/etc/gone", True)], "the original is kept while the file is still there"
    assert journal.original("/etc/gone") == b"bytes"
    assert not (root.path / "etc" / "gone").exists()
    # A journal that cannot keep the original (its state directory is a file): nothing is removed.
    (root.path / "etc" / "kept").write_bytes(b"kept")
    (root.path / "blocked").write_bytes(b"")
    with pytest.raises(HostPathError):
        root.remove("/etc/kept", journal=BackupJournal(root, "/blocked"))
    assert (root.path / "etc" / "kept").read_bytes() == b"kept"
    (root.path / "etc" / "kept").unlink()
    journal.restore(root, "/etc/gone")
    assert (root.path / "etc" / "gone").read_bytes() == b"bytes"
    assert [p.name for p in (root.path / "etc").iterdir()] == ["gone"]


def test_walk_files_lists_files_and_keeps_links_inside_the_root(root: Root) -> None:
    caps = root.path / "proc/driver/nvidia/capabilities"
    (caps / "gpu0/mig/gi1").mkdir(parents=True)
    (caps / "mig").mkdir()
    (caps / "mig/config").write_text("DeviceFileMinor: 1\n")
    (caps / "gpu0/mig/gi1/access").write_text("DeviceFileMinor: 12\n")
    (root.path / "etc/passwd").write_text("inside")
    (caps / "abs-link").symlink_to("/etc/passwd")  # taken inside the root, as a chroot would
    (caps / "escape").symlink_to("../../../../../../../../etc/shadow")  # climbs above the root: skipped
    found = {host: local.read_text() for host, local in root.walk_files("/proc/driver/nvidia/capabilities")}
    assert found == {
        "/proc/driver/nvidia/capabilities/abs-link": "inside",
        "/proc/driver/nvidia/capabilities/gpu0/mig/gi1/access": "DeviceFileMinor: 12\n",
        "/proc/driver/nvidia/capabilities/mig/config": "DeviceFileMinor: 1\n",
    }
    assert list(root.walk_files("/absent")) == []
