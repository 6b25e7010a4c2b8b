"""Character device nodes under a dev root: inspect them and create the missing ones (blocking).

On a real node ``make_node`` calls mknod(2) (root only). In simulation and tests a *placeholder* stands
in for each node: a regular file whose content is ``char MAJOR:MINOR`` (``placeholder_bytes``), since
a user who is not root cannot create device nodes. Either way the node appears atomically: it is made
under a temporary name and renamed into place, so nothing half-made is ever seen.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import PurePosixPath

from nodeagent.backends.hostfs import Root, atomic_write, fsync_dir
from nodeagent.errors import HostPathError


def placeholder_bytes(major: int, minor: int) -> bytes:
    """Content of a sandbox device-node placeholder (a regular file standing in for a char device)."""
    return f"char {major}:{minor}\n".encode()


def parse_placeholder(data: bytes) -> tuple[int, int] | None:
    """(major, minor) of a placeholder's content, or None when it is not one."""
    text = data.decode("ascii", errors="replace").strip()
    kind, _, numbers = text.partition(" ")
    major, _, minor = numbers.partition(":")
    if kind != "char" or not major.isdigit() or not minor.isdigit():
        return None
    return int(major), int(minor)


def mig_cap_minor(gpu_minor: int, gi: int, ci: int | None = None) -> int:
    """nvidia-caps minor of a GPU instance (``ci`` None) or compute instance access file.

    The driver numbers them as /proc/driver/nvidia-caps/mig-minors lists them: config 1, monitor 2,
    then per GPU 15 GPU instances of 1 + 8 minors each.
    """
    base = 3 + gpu_minor * 15 * 9 + gi * 9
    return base if ci is None else base + 1 + ci


@dataclass(frozen=True)
class NodeState:
    kind: str
    """``char`` for a real node, ``placeholder`` for a sandbox stand-in, ``other`` for anything else."""
    major: int = -1
    minor: int = -1


def host_path(dev_root: str, path: str) -> str:
    """``/dev/nvidia0`` under the dev root ``/`` or ``/run/nvidia/driver``."""
    return str(PurePosixPath(dev_root, path.lstrip("/")))


def inspect(root: Root, dev_root: str, path: str) -> NodeState | None:
    """What is at ``path`` under the dev root; None when nothing is."""
    try:
        local = root.resolve(host_path(dev_root, path))
        st = local.stat()
    except (FileNotFoundError, NotADirectoryError, HostPathError):
        return None
    if stat.S_ISCHR(st.st_mode):
        return NodeState("char", os.major(st.st_rdev), os.minor(st.st_rdev))
    if stat.S_ISREG(st.st_mode) and st.st_size < 64:
        numbers = parse_placeholder(local.read_bytes())
        if numbers is not None:
            return NodeState("placeholder", *numbers)
    return NodeState("other")


def make_node(root: Root, dev_root: str, path: str, *, major: int, minor: int, mode: int, placeholder: bool) -> None:
    """Create (or replace) a char device node; a placeholder file when ``placeholder``."""
    local = root.resolve(host_path(dev_root, path))
    if placeholder:
        atomic_write(local, placeholder_bytes(major, minor), mode=mode)
        return
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.nodeagent-tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.mknod(tmp, stat.S_IFCHR | mode, os.makedev(major, minor))
        tmp.chmod(mode)  # mknod's mode is filtered by the umask
        tmp.replace(local)
    except PermissionError as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise HostPathError(f"{host_path(dev_root, path)}: cannot create a device node (needs root)") from err
    except OSError as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise HostPathError(f"{host_path(dev_root, path)}: mknod failed: {err.strerror}") from err
    fsync_dir(local.parent)
