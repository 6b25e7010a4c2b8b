"""Host files under a Root: path resolution that cannot escape, atomic writes, a backup journal.

``Root`` maps host paths: ``/`` on bare metal, ``/host`` in the DaemonSet, a sandbox folder in simulation
and tests. Resolution follows symlinks the way the host would see them (an absolute link target is taken
relative to the root, as in a chroot), and refuses any link or ``..`` that climbs above the root.

``atomic_write`` writes a temp file in the same directory, fsyncs it, renames it over the target and
fsyncs the directory, so a crash leaves either the old or the new bytes, never half a file.

``BackupJournal`` keeps the original bytes (or the absence) of every file the agent first touches, under
the agent's state directory, so ``nodeagent revert`` can restore them exactly, even after a restart.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import hashlib
import json
import os
import posixpath
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from nodeagent.errors import HostPathError

_MAX_LINKS = 40

FaultHook = Callable[[str], None]
"""Called with a step name ('written', 'synced', 'renamed') during atomic_write; tests raise from it."""


def _no_fault(_: str) -> None:
    return None


class Root:
    """A host filesystem root. Every host path the agent reads or writes goes through one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        self._base = str(self.path).rstrip("/") + "/"

    def __repr__(self) -> str:
        return f"Root({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Root) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def is_host(self) -> bool:
        return self.path == Path("/")

    def resolve(self, host_path: str | PurePosixPath, *, follow_last: bool = True) -> Path:
        """Map an absolute host path to a local path, following links inside the root only."""
        # Plain strings and os.lstat: this runs for every host file the agent reads, hundreds per reconcile.
        base = self._base
        pending = [p for p in str(host_path).split("/") if p and p != "."]
        pending.reverse()  # pop() from the end takes the next component
        resolved: list[str] = []
        links = 0
        while pending:
            name = pending.pop()
            if name == "..":
                if not resolved:
                    raise HostPathError(f"{host_path}: climbs above the root {self.path}")
                resolved.pop()
                continue
            candidate = base + "/".join((*resolved, name))
            if pending or follow_last:
                try:
                    is_link = stat.S_ISLNK(os.lstat(candidate).st_mode)
                except OSError:
                    is_link = False
                if is_link:
                    links += 1
                    if links > _MAX_LINKS:
                        raise HostPathError(f"{host_path}: too many levels of symbolic links")
                    target = os.readlink(candidate)  # noqa: PTH115 - strings on this hot path
                    if target.startswith("/"):
                        resolved = []
                    pending.extend(reversed([p for p in target.split("/") if p and p != "."]))
                    continue
            resolved.append(name)
        return Path(base + "/".join(resolved)) if resolved else self.path

    def host_path(self, local: Path) -> str:
        """The host path of a local path inside this root (inverse of ``resolve`` without links)."""
        try:
            rel = local.absolute().relative_to(self.path)
        except ValueError as err:
            raise HostPathError(f"{local} is outside the root {self.path}") from err
        return "/" + rel.as_posix() if str(rel) != "." else "/"

    def exists(self, host_path: str) -> bool:
        try:
            return self.resolve(host_path).exists()
        except HostPathError:
            return False

    def is_file(self, host_path: str) -> bool:
        try:
            return self.resolve(host_path).is_file()
        except HostPathError:
            return False

    def is_dir(self, host_path: str) -> bool:
        try:
            return self.resolve(host_path).is_dir()
        except HostPathError:
            return False

    def read_bytes(self, host_path: str) -> bytes | None:
        """The file's bytes, or None when it does not exist. A directory or unreadable file raises."""
        local = self.resolve(host_path)
        try:
            return local.read_bytes()
        except FileNotFoundError:
            return None
        except IsADirectoryError as err:
            raise HostPathError(f"{host_path}: is a directory, expected a file") from err
        except OSError as err:
            raise HostPathError(f"{host_path}: cannot read: {err.strerror}") from err

    def read_text(self, host_path: str) -> str | None:
        data = self.read_bytes(host_path)
        if data is None:
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise HostPathError(f"{host_path}: not UTF-8 text (byte {err.start})") from err

    def listdir(self, host_path: str) -> list[str]:
        """Sorted entry names of a directory; empty when it does not exist."""
        local = self.resolve(host_path)
        try:
            return sorted(p.name for p in local.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def walk_files(self, host_dir: str) -> Iterator[tuple[str, Path]]:
        """Every file below a directory as (host path, local path), resolving the directory once.

        Symbolic links inside are resolved through the root one by one, so none can lead outside it; a
        link that would climb above the root is skipped.
        """
        pending = [(host_dir.rstrip("/") or "/", self.resolve(host_dir))]
        while pending:
            host, local = pending.pop()
            try:
                entries = sorted(os.scandir(local), key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                child = f"{host.rstrip('/')}/{entry.name}"
                if entry.is_symlink():
                    try:
                        target = self.resolve(child)
                    except HostPathError:
                        continue
                    if target.is_dir():
                        pending.append((child, target))
                    elif target.is_file():
                        yield child, target
                elif entry.is_dir(follow_symlinks=False):
                    pending.append((child, Path(entry.path)))
                elif entry.is_file(follow_symlinks=False):
                    yield child, Path(entry.path)

    def write_atomic(
        self,
        host_path: str,
        data: bytes,
        *,
        mode: int | None = None,
        journal: BackupJournal | None = None,
        fault: FaultHook = _no_fault,
    ) -> bool:
        """Write atomically; record the original in ``journal`` first. Returns False when unchanged."""
        local = self.resolve(host_path)
        if local.is_dir():
            raise HostPathError(f"{host_path}: is a directory, expected a file")
        try:
            if local.read_bytes() == data and (mode is None or stat.S_IMODE(local.stat().st_mode) == mode):
                return False
        except FileNotFoundError:
            pass
        if journal is not None:
            journal.record(self, host_path)
        atomic_write(local, data, mode=mode, fault=fault)
        if journal is not None:
            journal.wrote(host_path, data)
        return True

    def remove(self, host_path: str, *, journal: BackupJournal | None = None) -> bool:
        """Remove a file (recording it first). Returns False when it was already absent."""
        local = self.resolve(host_path, follow_last=False)
        if not local.exists() and not local.is_symlink():
            return False
        if journal is not None:
            journal.record(self, host_path)
        local.unlink()
        fsync_dir(local.parent)
        if journal is not None:
            journal.wrote(host_path, None)
        return True


def atomic_write(path: Path, data: bytes, *, mode: int | None = None, fault: FaultHook = _no_fault) -> None:
    """Temp file in the same directory, fsync, rename over ``path``, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        old = path.stat()
    except FileNotFoundError:
        old = None
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".nodeagent-tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fault("written")
            fh.flush()
            os.fsync(fh.fileno())
        fault("synced")
        if mode is not None:
            tmp.chmod(mode)
        elif old is not None:
            tmp.chmod(stat.S_IMODE(old.st_mode))
        else:
            tmp.chmod(0o644)
        if old is not None and os.geteuid() == 0:
            with contextlib.suppress(OSError):
                os.chown(tmp, old.st_uid, old.st_gid)
        tmp.replace(path)
        fault("renamed")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:  # some filesystems refuse fsync on directories
        if err.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


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

    @property
    def _dir(self) -> Path:
        return self.root.resolve(self.host_dir)

    @property
    def _index_host(self) -> str:
        return f"{self.host_dir}/{self.INDEX}"

    def _load(self, *, required: bool = False) -> dict[str, JournalEntry]:
        index = self._dir / self.INDEX
        try:
            raw = json.loads(index.read_text())
        except FileNotFoundError:
            if required:
                raise JournalError(
                    f"{self._index_host}: no backup journal: nodeagent never changed a file on this root with "
                    "this agent.state_dir (nothing to revert), or the journal was removed"
                ) from None
            return {}
        except (OSError, ValueError) as err:
            raise JournalError(f"{self._index_host}: backup journal unreadable: {err}") from err
        if not isinstance(raw, dict):
            raise JournalError(f"{self._index_host}: backup journal unreadable: not a JSON object")
        return {k: JournalEntry.from_json(self._index_host, k, v) for k, v in raw.items()}

    def _save(self, entries: dict[str, JournalEntry]) -> None:
        body = json.dumps({k: vars(v) for k, v in sorted(entries.items())}, indent=2).encode() + b"\n"
        atomic_write(self._dir / self.INDEX, body, mode=0o600)

    def _blob(self, sha: str, host_path: str) -> bytes:
        """A kept blob, checked against its digest before anything is restored from it."""
        if not _SHA256.match(sha):  # validated on load; kept here so no caller can pass a path
            raise JournalError(f"{self._index_host}: {sha[:80]!r} is not a blob name")
        try:
            data = (self._dir / sha).read_bytes()
        except OSError as err:
            raise JournalError(f"{self.host_dir}/{sha}: backup of {host_path} unreadable: {err.strerror}") from err
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
        entries = self._load()
        key = str(PurePosixPath("/", host_path))
        if key in entries:
            return
        local = root.resolve(key)
        try:
            data = local.read_bytes()
            entry = JournalEntry(key, True, stat.S_IMODE(local.stat().st_mode), hashlib.sha256(data).hexdigest())
            atomic_write(self._dir / entry.sha256, data, mode=0o600)
        except FileNotFoundError:
            entry = JournalEntry(key, False, None, "")
        entries[key] = entry
        self._save(entries)

    def wrote(self, host_path: str, data: bytes | None) -> None:
        """Note what the agent just put at ``host_path`` (None: removed it); its bytes are kept for diffs."""
        entries = self._load()
        key = str(PurePosixPath("/", host_path))
        if key not in entries:
            return
        digest = _digest(data)
        if data is not None and not (self._dir / digest).exists():
            atomic_write(self._dir / digest, data, mode=0o600)
        old = entries[key].written
        entries[key] = replace(entries[key], written=digest)
        self._save(entries)
        if old:
            self._drop_unused(entries, old)

    def _drop_unused(self, entries: dict[str, JournalEntry], sha: str) -> None:
        if sha and not any(sha in (e.sha256, e.written) for e in entries.values()):
            with contextlib.suppress(FileNotFoundError):
                (self._dir / sha).unlink()

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
            current = root.resolve(key, follow_last=False).read_bytes()
        except FileNotFoundError:
            current = None
        except IsADirectoryError:
            return f"{key} is now a directory"
        if _digest(current) == entry.written:
            return ""
        ours = self._blob(entry.written, key) if entry.written else None
        return _diff(key, ours, current)

    def restore(self, root: Root, host_path: str, *, force: bool = False) -> bool:
        """Put the original back; return True if the file changed. Raises RevertConflict unless ``force``."""
        entries = self._load(required=True)
        key = str(PurePosixPath("/", host_path))
        entry = entries[key]
        if not force:
            diff = self.conflict(root, key)
            if diff:
                raise RevertConflict(key, diff)
        local = root.resolve(key, follow_last=entry.existed)
        changed: bool
        if entry.existed:
            data = self._blob(entry.sha256, key)
            try:
                changed = local.read_bytes() != data
            except FileNotFoundError:
                changed = True
            if changed:
                atomic_write(local, data, mode=entry.mode)
        else:
            changed = local.exists() or local.is_symlink()
            if changed:
                local.unlink()
                fsync_dir(local.parent)
        del entries[key]
        self._save(entries)
        for sha in (entry.sha256, entry.written or ""):
            self._drop_unused(entries, sha)
        return changed

    def paths(self, *, required: bool = False) -> Iterator[str]:
        yield from sorted(self._load(required=required))
