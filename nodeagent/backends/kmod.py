"""Loading kernel modules with modprobe, as an async subprocess with a timeout.

When the agent sees the host through a root other than ``/`` (``/host`` in the DaemonSet), modprobe
runs chrooted into it, so it uses the host's modules, modules.dep and /etc/modprobe.d.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from nodeagent.backends import procs
from nodeagent.backends.hostfs import Root
from nodeagent.errors import NodeAgentError


class ModprobeError(NodeAgentError):
    """modprobe ran and failed; the message carries its own error text."""


@runtime_checkable
class ModuleLoader(Protocol):
    async def load(self, module: str, params: Sequence[str] = ()) -> None:
        """Load ``module`` with ``params``; raise ModprobeError, CallTimeout or BackendUnavailable."""


class Modprobe:
    """The real modprobe."""

    def __init__(self, root: Root, *, timeout_s: float, binary: str = "modprobe") -> None:
        self.root = root
        self.timeout_s = timeout_s
        self.binary = binary

    def argv(self, module: str, params: Sequence[str] = ()) -> list[str]:
        argv = [self.binary, module, *params]
        return argv if self.root.is_host else ["chroot", str(self.root.path), *argv]

    async def load(self, module: str, params: Sequence[str] = ()) -> None:
        done = await procs.run(self.argv(module, params), timeout_s=self.timeout_s)
        if not done.ok:
            raise ModprobeError(done.describe_failure())
