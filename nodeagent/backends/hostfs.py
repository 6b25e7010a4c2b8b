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
import secrets
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

    # --------------------------------------------------------- I/O through directory descriptors
    #
    # Resolution and use are one operation: every component is opened relative to the descriptor of its
    # parent with O_NOFOLLOW, and a symlink met on the way is read (readlinkat) and followed inside the
    # root, as the kernel's openat2(RESOLVE_IN_ROOT) does. A directory swapped for a link between two
    # steps cannot redirect anything: the descriptors held are of the directories really walked.

    def _walk(self, host_path: str, *, create: bool = False, follow_last: bool = True) -> tuple[int, str]:
        """(descriptor of the parent directory, last name) of ``host_path``; the caller closes the fd.

        Raises FileNotFoundError when a directory on the way is missing (and ``create`` is false).
        """
        pending = [p for p in str(host_path).split("/") if p and p != "."]
        pending.reverse()
        stack = [os.open(self.path, _DIR_FLAGS)]
        links = 0
        try:
            while True:
                if not pending:
                    raise HostPathError(f"{host_path}: names a directory, not a file")
                name = pending.pop()
                if name == "..":
                    if len(stack) == 1:
                        raise HostPathError(f"{host_path}: climbs above the root {self.path}")
                    os.close(stack.pop())
                    continue
                last = not pending
                target = self._link_at(stack[-1], name) if (not last or follow_last) else None
                if target is not None:
                    links += 1
                    if links > _MAX_LINKS:
                        raise HostPathError(f"{host_path}: too many levels of symbolic links")
                    if target.startswith("/"):
                        for fd in stack[1:]:
                            os.close(fd)
                        del stack[1:]
                    pending.extend(reversed([p for p in target.split("/") if p and p != "."]))
                    continue
                if last:
                    parent = stack.pop()
                    return parent, name
                stack.append(self._open_dir_at(stack[-1], name, host_path, create=create))
        finally:
            for fd in stack:
                os.close(fd)

    @staticmethod
    def _link_at(dir_fd: int, name: str) -> str | None:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return os.readlink(name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else None

    @staticmethod
    def _open_dir_at(dir_fd: int, name: str, host_path: str, *, create: bool) -> int:
        for attempt in range(2):
            try:
                return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                if not create or attempt:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=dir_fd)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    # a link appeared after it was checked (a race), or a file is in the way: never follow
                    raise HostPathError(f"{host_path}: {name} is not a directory (or changed while walked)") from err
                raise
        raise FileNotFoundError(name)  # pragma: no cover - the loop returns or raises

    def read_bytes(self, host_path: str, *, max_bytes: int | None = None) -> bytes | None:
        """The file's bytes, or None when it does not exist. A directory, FIFO or unreadable file raises.

        ``max_bytes``: a larger file is refused by name before it is read.
        """
        try:
            dir_fd, name = self._walk(host_path)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise host_error(host_path, "read", err) from err
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise HostPathError(f"{host_path}: became a symbolic link while being read") from err
            raise host_error(host_path, "read", err) from err
        finally:
            os.close(dir_fd)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise HostPathError(f"{host_path}: is a directory, expected a file")
            if not stat.S_ISREG(st.st_mode):
                raise HostPathError(f"{host_path}: not a regular file (a FIFO, socket or device); refusing to read it")
            if max_bytes is not None and st.st_size > max_bytes:
                raise HostPathError(
                    f"{host_path}: {st.st_size} bytes, larger than the {max_bytes // 1024} KiB the agent reads; "
                    "refusing"
                )
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
                if max_bytes is not None and sum(map(len, chunks)) > max_bytes:
                    raise HostPathError(f"{host_path}: grew past {max_bytes // 1024} KiB while being read")
            return b"".join(chunks)
        except OSError as err:
            raise host_error(host_path, "read", err) from err
        finally:
            os.close(fd)

    def read_text(self, host_path: str) -> str | None:
        data = self.read_bytes(host_path)
        if data is None:
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise HostPathError(f"{host_path}: not UTF-8 text (byte {err.start})") from err

    def _open_dir(self, host_path: str) -> int | None:
        if not [p for p in host_path.split("/") if p and p != "."]:
            return os.open(self.path, _DIR_FLAGS)
        try:
            dir_fd, name = self._walk(host_path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return self._open_dir_at(dir_fd, name, host_path, create=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(dir_fd)

    def listdir(self, host_path: str) -> list[str]:
        """Sorted entry names of a directory; empty when it does not exist."""
        fd = self._open_dir(host_path)
        if fd is None:
            return []
        try:
            return sorted(os.listdir(fd))  # noqa: PTH208 - a descriptor, which pathlib cannot take
        finally:
            os.close(fd)

    def list_files(self, host_path: str) -> list[str]:
        """Sorted names of the regular files (or links to them) directly in a directory; hidden ones skipped."""
        names = []
        for name in self.listdir(host_path):
            if name.startswith("."):
                continue
            try:
                dir_fd, last = self._walk(f"{host_path.rstrip('/')}/{name}")
            except (FileNotFoundError, HostPathError, OSError):
                continue
            try:
                if stat.S_ISREG(os.stat(last, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    names.append(name)
            except OSError:
                pass
            finally:
                os.close(dir_fd)
        return names

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
        current = self.read_bytes(host_path)
        if current == data and (mode is None or self._mode(host_path) == mode):
            return False
        prepared = journal.prepare(self, host_path, data) if journal is not None else None
        try:
            self.write_file(host_path, data, mode=mode, fault=fault)
        except BaseException:
            if journal is not None and prepared is not None:
                journal.forget_prepare(host_path, prepared)
            raise
        return True

    def _mode(self, host_path: str) -> int | None:
        try:
            dir_fd, name = self._walk(host_path)
        except FileNotFoundError:
            return None
        try:
            return stat.S_IMODE(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except FileNotFoundError:
            return None
        finally:
            os.close(dir_fd)

    def write_file(self, host_path: str, data: bytes, *, mode: int | None = None, fault: FaultHook = _no_fault) -> None:
        """Temp file, fsync, rename over the target, fsync the directory: all relative to one directory fd."""
        try:
            dir_fd, name = self._walk(host_path, create=True)
        except OSError as err:
            raise host_error(host_path, "write", err) from err
        try:
            _write_at(dir_fd, name, data, mode=mode, fault=fault, host_path=host_path)
        finally:
            os.close(dir_fd)

    def remove(self, host_path: str, *, journal: BackupJournal | None = None) -> bool:
        """Remove a file (recording it first). Returns False when it was already absent."""
        try:
            dir_fd, name = self._walk(host_path, follow_last=False)
        except FileNotFoundError:
            return False
        try:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            if stat.S_ISDIR(st.st_mode):
                raise HostPathError(f"{host_path}: is a directory, expected a file")
            prepared = journal.prepare(self, host_path, None) if journal is not None else None
            try:
                os.unlink(name, dir_fd=dir_fd)
            except BaseException:
                if journal is not None and prepared is not None:
                    journal.forget_prepare(host_path, prepared)
                raise
            os.fsync(dir_fd)
        except OSError as err:
            raise host_error(host_path, "remove", err) from err
        finally:
            os.close(dir_fd)
        return True

    def sweep_temp_files(self, host_dir: str) -> list[str]:
        """Remove temp files a killed writer left in ``host_dir`` (only those of processes no longer alive)."""
        removed: list[str] = []
        fd = self._open_dir(host_dir)
        if fd is None:
            return removed
        try:
            for name in os.listdir(fd):  # noqa: PTH208 - a descriptor
                found = _TEMP_NAME.match(name)
                if not found or _alive(int(found.group(1))):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
                    removed.append(f"{host_dir.rstrip('/')}/{name}")
        finally:
            os.close(fd)
        return removed


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_NAME = re.compile(r"^\..*\.(\d+)\.[0-9a-f]{12}\.nodeagent-tmp$")


_WHAT_TO_DO = {
    errno.EROFS: "the filesystem is mounted read-only: remount it read-write, or point the setting at a writable path",
    errno.EPERM: "the file or its directory is immutable or the operation is not permitted (lsattr; chattr -i)",
    errno.EACCES: "permission denied: run the agent as root (or give it write access to that path)",
    errno.ENOSPC: "no space left on that filesystem: free some space and run again",
    errno.EDQUOT: "disk quota exceeded on that filesystem: free some space and run again",
    errno.EIO: "I/O error from the filesystem: check the disk (dmesg)",
}


def host_error(host_path: str, verb: str, err: OSError) -> HostPathError:
    """A HostPathError naming the path, what failed, and what the operator can do about it."""
    hint = _WHAT_TO_DO.get(err.errno or 0, "")
    return HostPathError(f"{host_path}: cannot {verb}: {err.strerror}" + (f" ({hint})" if hint else ""))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temp_name(name: str) -> str:
    return f".{name[:100]}.{os.getpid()}.{secrets.token_hex(6)}.nodeagent-tmp"


def _write_at(dir_fd: int, name: str, data: bytes, *, mode: int | None, fault: FaultHook, host_path: str) -> None:
    try:
        old: os.stat_result | None = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        old = None
    if old is not None and stat.S_ISDIR(old.st_mode):
        raise HostPathError(f"{host_path}: is a directory, expected a file")
    tmp = _temp_name(name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as err:
        raise host_error(host_path, "write", err) from err
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            fault("written")
            os.fsync(fd)
            fault("synced")
            keep = stat.S_IMODE(old.st_mode) if old is not None and stat.S_ISREG(old.st_mode) else 0o644
            os.fchmod(fd, mode if mode is not None else keep)
            if old is not None and os.geteuid() == 0:
                with contextlib.suppress(OSError):
                    os.fchown(fd, old.st_uid, old.st_gid)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        fault("renamed")
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        if isinstance(err, OSError) and not isinstance(err, HostPathError) and err.errno is not None:
            raise host_error(host_path, "write", err) from err
        raise
    try:
        os.fsync(dir_fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EBADF):
            raise


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
        entries = self._load()
        key = str(PurePosixPath("/", host_path))
        if key in entries:
            return
        data = root.read_bytes(key)
        if data is not None:
            entry = JournalEntry(key, True, root._mode(key), hashlib.sha256(data).hexdigest())
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
        entries = self._load()
        key = str(PurePosixPath("/", host_path))
        new_entry = key not in entries
        if new_entry:
            original = root.read_bytes(key)
            if original is not None:
                sha = hashlib.sha256(original).hexdigest()
                self.root.write_file(f"{self.host_dir}/{sha}", original, mode=0o600)
                entries[key] = JournalEntry(key, True, root._mode(key), sha)
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
