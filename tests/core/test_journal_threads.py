"""The backup journal under writes from several worker threads at once (labels, CDI and the runtime write
their files from ``run_blocking`` at the same time after a MIG change).

Found by the DaemonSet test on the real cluster: two threads' read-modify-writes of the index lost an entry's
update and dropped a blob the index still named, so ``nodeagent revert`` failed with "backup ... is missing".
"""

from __future__ import annotations

import threading
from pathlib import Path

from nodeagent.backends.hostfs import Root
from nodeagent.backends.journal import BackupJournal

THREADS = 6
ROUNDS = 15


def test_concurrent_writes_keep_every_entry_and_every_blob(tmp_path: Path) -> None:
    root = Root(tmp_path)
    paths = [f"/etc/file-{i}" for i in range(THREADS)]
    start = threading.Barrier(THREADS)

    def writer(path: str) -> None:
        journal = BackupJournal(root, "/var/lib/nodeagent")  # each subsystem's view of the one journal
        start.wait()
        for n in range(ROUNDS):
            root.write_atomic(path, f"{path} round {n}\n".encode(), journal=journal)

    threads = [threading.Thread(target=writer, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    journal = BackupJournal(root, "/var/lib/nodeagent")
    assert sorted(journal.paths()) == sorted(paths)
    for path in paths:
        assert journal.conflict(root, path) == "", path  # what it last wrote is what is there, and kept
    for path in paths:
        assert journal.restore(root, path) is True
        assert not (tmp_path / path.lstrip("/")).exists()
    assert list(journal.paths()) == []
