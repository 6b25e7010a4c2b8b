"""Typed errors, each with one consequence for the agent.

Backends translate library and OS errors into these at their boundary (``raise X(...) from err``), so
subsystems and the agent never need to know which library failed.
"""

from __future__ import annotations


class NodeAgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(NodeAgentError):
    """Bad settings or a bad input file. The CLI exits with code 2; a reload keeps the old settings."""

    def __init__(self, message: str, *, source: str = "", key: str = "", line: int | None = None) -> None:
        self.source = source
        self.key = key
        self.line = line
        where = source
        if line is not None:
            where = f"{where}:{line}" if where else f"line {line}"
        if key:
            where = f"{where}: {key}" if where else key
        super().__init__(f"{where}: {message}" if where else message)
        self.bare_message = message


class GpuServedTwice(ConfigError):
    """Settings under which two subsystems (the device plugin and DRA) would serve the same GPU: refused, as a
    GPU both allocate could be given to two pods."""


class TemporaryError(NodeAgentError):
    """Something that may succeed later; the supervisor retries with backoff."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentError(NodeAgentError):
    """Retrying will not help until an operator acts; the subsystem is marked failed."""


class BackendUnavailable(NodeAgentError):
    """A backend (NVML, a runtime socket, the kubelet) cannot be reached; the reason says why."""


class HostPathError(NodeAgentError):
    """A host path resolves outside its Root, is of the wrong kind, or cannot be read or written."""


class CallTimeout(NodeAgentError):
    """A blocking call (NVML, a subprocess) did not return within its timeout."""

    def __init__(self, call: str, timeout_s: float) -> None:
        super().__init__(f"{call} did not return within {timeout_s:g}s")
        self.call = call
        self.timeout_s = timeout_s


class MigOperationError(NodeAgentError):
    """A MIG request the GPU refuses (as NVML would): wrong mode, bad placement, unknown profile, in use."""
