"""One agent per root: an exclusive flock on ``<state_dir>/agent.lock`` under the Root.

``run``, ``apply``, ``revert`` and ``mig apply`` hold it for their whole life; a second one on the same root fails at
once with a message naming the holder's pid and command (read from the lock file, where each holder
writes them). The kernel drops the lock when the holder exits, even on kill -9, so it never goes stale.
A revert refused this way is the point: a running agent would re-apply its change a second later; so is a
``mig apply``: the running agent owns the MIG layout (it is asked through the Node label or its settings).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from dataclasses import dataclass

from nodeagent.backends.hostfs import Root
from nodeagent.errors import HostPathError, NodeAgentError

LOCK_NAME = "agent.lock"


class AgentLocked(NodeAgentError):
    """Another nodeagent process holds the root."""

    def __init__(self, lock_path: str, holder: str, command: str) -> None:
        advice = _ADVICE.get(command, "wait for it to finish, or stop it")
        super().__init__(f"{lock_path}: another nodeagent holds this root ({holder}); `{command}` refused: {advice}")
        self.holder = holder


_ADVICE = {
    "revert": "stop the running agent first (it would re-apply what revert restores)",
    "mig apply": (
        "the running agent owns the MIG layout and would put its own back; ask it instead (the Node label "
        "nvidia.com/mig.config, or the settings mig.config and mig.config_file, then SIGHUP), or stop it first"
    ),
}


@dataclass
class AgentLock:
    """A held lock; ``release`` (or process exit) lets the next agent in."""

    path: str
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def acquire(root: Root, state_dir: str, command: str) -> AgentLock:
    """Take the root's agent lock without waiting; raise AgentLocked naming the holder."""
    host_path = f"{state_dir.rstrip('/')}/{LOCK_NAME}"
    try:
        dir_fd, name = root._walk(host_path, create=True)
    except OSError as err:
        raise HostPathError(f"{host_path}: cannot create the agent lock: {err.strerror}") from err
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    except OSError as err:
        raise HostPathError(f"{host_path}: cannot open the agent lock: {err.strerror}") from err
    finally:
        os.close(dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = _holder(fd)
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise AgentLocked(host_path, holder, command) from None
        raise HostPathError(f"{host_path}: cannot lock: {err.strerror}") from err
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} ({command})\n".encode(), 0)
    return AgentLock(host_path, fd)


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "pid unknown"
