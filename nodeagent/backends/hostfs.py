"""Host files under a Root: path resolution that cannot escape, atomic writes.

``Root`` maps host paths: ``/`` on bare metal, ``/host`` in the DaemonSet, a sandbox folder in simulation
and tests. Resolution follows symlinks the way the host would see them (an absolute link target is taken
relative to the root, as in a chroot), and refuses any link or ``..`` that climbs above the root.

``atomic_write`` writes a temp file in the same directory, fsyncs it, renames it over the target and
fsyncs the directory, so a crash leaves either the old or the new bytes, never half a file.

The backup journal that keeps the originals for ``nodeagent revert`` is ``backends/journal.py``; a write
or removal through the Root tells it first (``WriteJournal``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Protocol

from nodeagent.errors import HostPathError

_MAX_LINKS = 40

FaultHook = Callable[[str], None]
"""Called with a step name ('written', 'synced', 'renamed') during atomic_write; tests raise from it."""


def _no_fault(_: str) -> None:
    return None


class WriteJournal(Protocol):
    """What a write or removal through the Root tells first (``journal.BackupJournal``)."""

    def prepare(self, root: Root, host_path: str, data: bytes | None) -> tuple[bool, str | None]:
        """Before ``data`` (None: a removal) goes to ``host_path``; returns what ``forget_prepare`` needs."""

    def forget_prepare(self, host_path: str, prepared: tuple[bool, str | None]) -> None:
        """The write announced by ``prepare`` failed."""


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
        journal: WriteJournal | None = None,
        fault: FaultHook = _no_fault,
    ) -> bool:
        """Write atomically; record the original in ``journal`` first. Returns False when unchanged."""
        current = self.read_bytes(host_path)
        if current == data and (mode is None or self.mode(host_path) == mode):
            return False
        prepared = journal.prepare(self, host_path, data) if journal is not None else None
        try:
            self.write_file(host_path, data, mode=mode, fault=fault)
        except BaseException:
            if journal is not None and prepared is not None:
                journal.forget_prepare(host_path, prepared)
            raise
        return True

    def mode(self, host_path: str) -> int | None:
        """The permission bits of the file at ``host_path`` (not following a last link); None when absent."""
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

    def remove(self, host_path: str, *, journal: WriteJournal | None = None) -> bool:
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
