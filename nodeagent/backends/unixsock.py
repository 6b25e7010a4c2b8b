"""Unix sockets in a host directory, through the Root: the kubelet's plugin directories (device plugins,
``plugins_registry``, ``plugins/<driver>``).

The directory is opened once per bind or dial and the socket is named through that descriptor
(``/proc/self/fd/N/<name>``), so a link swapped in cannot redirect it and a deep sandbox path never hits the
107-byte limit of a unix socket address.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Iterator

from nodeagent.backends.hostfs import Root
from nodeagent.errors import BackendUnavailable, HostPathError

SUN_PATH_MAX = 107
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW


@contextlib.contextmanager
def directory(root: Root, host_dir: str) -> Iterator[int]:
    """A descriptor of the directory; BackendUnavailable when it is not there."""
    try:
        local = root.resolve(host_dir)
        fd = os.open(local, _DIR_FLAGS)
    except HostPathError as err:
        raise BackendUnavailable(str(err)) from err
    except FileNotFoundError:
        raise BackendUnavailable(f"no directory {host_dir}") from None
    except OSError as err:
        raise BackendUnavailable(f"{host_dir}: {err.strerror}") from err
    try:
        yield fd
    finally:
        os.close(fd)


def address(root: Root, host_dir: str, fd: int, name: str) -> str:
    """A short address of ``name`` in the directory open as ``fd``: through /proc where it exists."""
    via_fd = f"/proc/self/fd/{fd}/{name}"
    if os.path.isdir(f"/proc/self/fd/{fd}"):  # noqa: PTH112 - a descriptor's directory, not a host path
        return via_fd
    local = str(root.resolve(host_dir) / name)
    if len(local.encode()) > SUN_PATH_MAX:
        raise BackendUnavailable(f"{local}: path too long for a unix socket ({len(local)} > {SUN_PATH_MAX})")
    return local


def socket_inode_at(fd: int, name: str) -> int | None:
    """The inode of the unix socket ``name`` in the directory open as ``fd``; None when there is none."""
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_ino if stat.S_ISSOCK(st.st_mode) else None


def bind(root: Root, host_dir: str, name: str) -> tuple[socket.socket, int | None]:
    """A listening, non-blocking unix socket ``name`` in the directory (a stale socket of that name is replaced)
    and its inode. BackendUnavailable when the directory is missing or the socket cannot be bound."""
    with directory(root, host_dir) as fd:
        with contextlib.suppress(FileNotFoundError):
            if socket_inode_at(fd, name) is not None:
                os.unlink(name, dir_fd=fd)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(address(root, host_dir, fd, name))
            sock.listen(16)
            sock.setblocking(False)
        except OSError as err:
            sock.close()
            path = f"{host_dir.rstrip('/')}/{name}"
            raise BackendUnavailable(f"cannot serve {path}: {err.strerror or err}") from err
        return sock, socket_inode_at(fd, name)


def unlink_if(root: Root, host_dir: str, name: str, inode: int | None) -> None:
    """Remove the socket ``name`` if it is still the one with ``inode`` (another's is left alone)."""
    if inode is None:
        return
    with contextlib.suppress(BackendUnavailable, FileNotFoundError), directory(root, host_dir) as fd:
        if socket_inode_at(fd, name) == inode:
            os.unlink(name, dir_fd=fd)
