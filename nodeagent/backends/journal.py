"""The backup journal: the original bytes (or the absence) of every file the agent first touches.

Kept under the agent's state directory, in the same Root as the files, so ``nodeagent revert`` can restore
them exactly, even after a restart. The index and the blobs are validated as untrusted data before any use.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import posixpath
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

from nodeagent.backends.hostfs import Root
from nodeagent.errors import HostPathError

_INDEX_LOCKS: dict[str, threading.RLock] = {}
_INDEX_LOCKS_GUARD = threading.Lock()


def _index_lock(key: str) -> threading.RLock:
    """One lock per journal directory in this process: subsystems write files from worker threads at the same
    time (labels and CDI after a MIG change), and each change to the index is a read-modify-write of one file
    that may also drop a blob nothing else references. (Other processes are kept out by the agent lock.)"""
    with _INDEX_LOCKS_GUARD:
        return _INDEX_LOCKS.setdefault(key, threading.RLock())


class JournalError(HostPathError):
    """The backup journal is missing, malformed or tampered with: revert refuses rather than guess."""


class RevertConflict(HostPathError):
    """A file was changed by someone else after the agent wrote it; revert needs ``--force``."""

    def __init__(self, host_path: str, diff: str) -> None:
        super().__init__(
            f"{host_path}: changed by someone else since nodeagent wrote it; not overwritten. What changed "
            f"since:\n{diff}\nrun `nodeagent revert --force` to restore the original anyway"
        )
        self.host_path = host_path
        self.diff = diff


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class JournalEntry:
    host_path: str
    existed: bool
    mode: int | None
    sha256: str
    """Digest of the original bytes ('' when the file did not exist)."""
    written: str | None = None
    """Digest of the bytes the agent last wrote ('' when it removed the file); None in older journals."""

    @classmethod
    def from_json(cls, index: str, key: object, raw: object) -> JournalEntry:
        """Validate one index entry: the journal is data, never a path or a blob name to trust."""

        def bad(why: str) -> JournalError:
            return JournalError(f"{index}: entry {key!r}: {why}; the journal is not trusted, nothing restored")

        if not isinstance(key, str) or not _clean_host_path(key):
            raise bad("not a clean absolute path")
        if not isinstance(raw, dict) or raw.get("host_path") != key:
            raise bad("malformed (host_path must equal the key)")
        existed, mode, sha, written = raw.get("existed"), raw.get("mode"), raw.get("sha256"), raw.get("written")
        if not isinstance(existed, bool):
            raise bad("`existed` must be true or false")
        if mode is not None and (not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777):
            raise bad(f"`mode` {mode!r} is not a file mode")
        if not isinstance(sha, str) or not (_SHA256.match(sha) if existed else sha == ""):
            raise bad(f"`sha256` {str(sha)[:80]!r} is not a sha256 digest")
        if written is not None and (not isinstance(written, str) or not (written == "" or _SHA256.match(written))):
            raise bad(f"`written` {str(written)[:80]!r} is not a sha256 digest")
        if set(raw) - {"host_path", "existed", "mode", "sha256", "written"}:
            raise bad(f"unknown fields {sorted(set(raw) - {'host_path', 'existed', 'mode', 'sha256', 'written'})}")
        return cls(key, existed, mode, sha, written)


def _clean_host_path(path: str) -> bool:
    return (
        path.startswith("/")
        and "\x00" not in path
        and posixpath.normpath(path) == path
        and ".." not in path.split("/")
        and path != "/"
    )


def _diff(host_path: str, ours: bytes | None, now: bytes | None) -> str:
    """What changed between the bytes the agent wrote and the bytes there now, as a unified diff."""
    a = (ours or b"").decode("utf-8", errors="replace").splitlines(keepends=True)
    b = (now or b"").decode("utf-8", errors="replace").splitlines(keepends=True)
    label_a = f"{host_path} (as nodeagent wrote it)" if ours is not None else "/dev/null (nodeagent removed it)"
    label_b = f"{host_path} (now)" if now is not None else "/dev/null (now absent)"
    text = "".join(difflib.unified_diff(a, b, label_a, label_b))
    return text or f"{host_path}: bytes differ outside the text (encoding or line endings)"


def _digest(data: bytes | None) -> str:
    return "" if data is None else hashlib.sha256(data).hexdigest()


class BackupJournal:
    """Originals of every file the agent touched, kept under ``<state_dir>/backups`` in the Root.

    The first ``record`` of a path wins: later writes never replace the original. ``wrote`` notes what the
    agent last put there, so ``restore`` can tell a file someone else changed since (and refuse without
    ``force``). ``restore`` puts the original bytes and mode back (or removes a file the agent created)
    and forgets the entry. The index and blobs are validated as untrusted data before any use.
    """

    INDEX = "index.json"

    def __init__(self, root: Root, state_dir: str) -> None:
        self.root = root
        self.host_dir = str(PurePosixPath(state_dir, "backups"))
        self._lock = _index_lock(f"{root.path}\0{self.host_dir}")

    @property
    def _index_host(self) -> str:
        return f"{self.host_dir}/{self.INDEX}"

    def _load(self, *, required: bool = False) -> dict[str, JournalEntry]:
        try:
            text = self.root.read_bytes(self._index_host, max_bytes=64 << 20)
            if text is None:
                raise FileNotFoundError(self._index_host)
            raw = json.loads(text)
        except FileNotFoundError:
            if required:
                raise JournalError(
                    f"{self._index_host}: no backup journal: nodeagent never changed a file on this root with "
                    "this agent.state_dir (nothing to revert), or the journal was removed"
                ) from None
            return {}
        except (HostPathError, ValueError) as err:
            raise JournalError(f"{self._index_host}: backup journal unreadable: {err}") from err
        if not isinstance(raw, dict):
            raise JournalError(f"{self._index_host}: backup journal unreadable: not a JSON object")
        return {k: JournalEntry.from_json(self._index_host, k, v) for k, v in raw.items()}

    def _save(self, entries: dict[str, JournalEntry]) -> None:
        body = json.dumps({k: vars(v) for k, v in sorted(entries.items())}, indent=2).encode() + b"\n"
        self.root.write_file(self._index_host, body, mode=0o600)

    def _blob(self, sha: str, host_path: str) -> bytes:
        """A kept blob, checked against its digest before anything is restored from it."""
        if not _SHA256.match(sha):  # validated on load; kept here so no caller can pass a path
            raise JournalError(f"{self._index_host}: {sha[:80]!r} is not a blob name")
        try:
            data = self.root.read_bytes(f"{self.host_dir}/{sha}")
        except HostPathError as err:
            raise JournalError(f"{self.host_dir}/{sha}: backup of {host_path} unreadable: {err}") from err
        if data is None:
            raise JournalError(f"{self.host_dir}/{sha}: backup of {host_path} is missing; nothing restored")
        if hashlib.sha256(data).hexdigest() != sha:
            raise JournalError(
                f"{self.host_dir}/{sha}: backup of {host_path} does not match its sha256 (corrupted or tampered "
                "with); nothing restored"
            )
        return data

    def entries(self, *, required: bool = False) -> dict[str, JournalEntry]:
        return self._load(required=required)

    def record(self, root: Root, host_path: str) -> None:
        """Keep the original of ``host_path`` unless one is already kept."""
        with self._lock:
            entries = self._load()
            key = str(PurePosixPath("/", host_path))
            if key in entries:
                return
            data = root.read_bytes(key)
            if data is not None:
                entry = JournalEntry(key, True, root.mode(key), hashlib.sha256(data).hexdigest())
                self.root.write_file(f"{self.host_dir}/{entry.sha256}", data, mode=0o600)
            else:
                entry = JournalEntry(key, False, None, "")
            entries[key] = entry
            self._save(entries)

    def prepare(self, root: Root, host_path: str, data: bytes | None) -> tuple[bool, str | None]:
        """Before the agent writes ``data`` (None: removes): keep the original, note what it will write.

        One index update, done before the file changes, so nothing is left to do after it appears.
        Returns what ``forget_prepare`` needs if the write then fails.
        """
        with self._lock:
            entries = self._load()
            key = str(PurePosixPath("/", host_path))
            new_entry = key not in entries
            if new_entry:
                original = root.read_bytes(key)
                if original is not None:
                    sha = hashlib.sha256(original).hexdigest()
                    self.root.write_file(f"{self.host_dir}/{sha}", original, mode=0o600)
                    entries[key] = JournalEntry(key, True, root.mode(key), sha)
                else:
                    entries[key] = JournalEntry(key, False, None, "")
            digest = _digest(data)
            if data is not None and self.root.read_bytes(f"{self.host_dir}/{digest}") != data:
                self.root.write_file(f"{self.host_dir}/{digest}", data, mode=0o600)
            previous = entries[key].written
            entries[key] = replace(entries[key], written=digest)
            self._save(entries)
            if previous:
                self._drop_unused(entries, previous)  # an earlier write's bytes: no longer what the agent wrote
            return new_entry, previous

    def forget_prepare(self, host_path: str, prepared: tuple[bool, str | None]) -> None:
        """The write announced by ``prepare`` failed: the journal goes back to what it said before."""
        with self._lock:
            new_entry, previous = prepared
            entries = self._load()
            key = str(PurePosixPath("/", host_path))
            if key not in entries:
                return
            entry = entries[key]
            if new_entry:
                del entries[key]
            else:
                entries[key] = replace(entry, written=previous)
            self._save(entries)
            for sha in {entry.written or "", entry.sha256 if new_entry else ""}:
                self._drop_unused(entries, sha)

    def wrote(self, host_path: str, data: bytes | None) -> None:
        """Note what the agent just put at ``host_path`` (None: removed it); its bytes are kept for diffs."""
        with self._lock:
            entries = self._load()
            key = str(PurePosixPath("/", host_path))
            if key not in entries:
                return
            digest = _digest(data)
            if data is not None and self.root.read_bytes(f"{self.host_dir}/{digest}") != data:
                self.root.write_file(f"{self.host_dir}/{digest}", data, mode=0o600)
            old = entries[key].written
            entries[key] = replace(entries[key], written=digest)
            self._save(entries)
            if old:
                self._drop_unused(entries, old)

    def _drop_unused(self, entries: dict[str, JournalEntry], sha: str) -> None:
        if sha and not any(sha in (e.sha256, e.written) for e in entries.values()):
            self.root.remove(f"{self.host_dir}/{sha}")

    def original(self, host_path: str) -> bytes | None:
        """The kept original bytes, or None if the file did not exist. KeyError if never recorded."""
        key = str(PurePosixPath("/", host_path))
        entry = self._load()[key]
        if not entry.existed:
            return None
        return self._blob(entry.sha256, key)

    def conflict(self, root: Root, host_path: str) -> str:
        """A diff when the file changed since the agent last wrote it; '' when it did not (or unknown)."""
        key = str(PurePosixPath("/", host_path))
        entry = self._load(required=True)[key]
        if entry.written is None:
            return ""
        try:
            current = root.read_bytes(key)
        except HostPathError as err:
            return str(err)
        if _digest(current) == entry.written:
            return ""
        ours = self._blob(entry.written, key) if entry.written else None
        return _diff(key, ours, current)

    def restore(self, root: Root, host_path: str, *, force: bool = False) -> bool:
        """Put the original back; return True if the file changed. Raises RevertConflict unless ``force``."""
        with self._lock:
            entries = self._load(required=True)
            key = str(PurePosixPath("/", host_path))
            entry = entries[key]
            if not force:
                diff = self.conflict(root, key)
                if diff:
                    raise RevertConflict(key, diff)
            changed: bool
            if entry.existed:
                data = self._blob(entry.sha256, key)
                changed = root.read_bytes(key) != data
                if changed:
                    root.write_file(key, data, mode=entry.mode)
            else:
                changed = root.remove(key)
            del entries[key]
            self._save(entries)
            for sha in (entry.sha256, entry.written or ""):
                self._drop_unused(entries, sha)
            return changed

    def paths(self, *, required: bool = False) -> Iterator[str]:
        yield from sorted(self._load(required=required))
