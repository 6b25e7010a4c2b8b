"""Async subprocesses with timeouts: the only way the agent runs a program (modprobe, systemctl, ...)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nodeagent.errors import BackendUnavailable, CallTimeout


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe_failure(self) -> str:
        """The program's own error, trimmed, for status reasons and logs."""
        text = (self.stderr or self.stdout).decode("utf-8", errors="replace").strip()
        tail = text.splitlines()[-5:] if text else []
        return f"{' '.join(self.argv)} exited {self.returncode}" + (": " + " | ".join(tail) if tail else "")


async def run(
    argv: Sequence[str],
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    cwd: str | None = None,
) -> Completed:
    """Run a program, capture its output, kill its process group if it outlives ``timeout_s``."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    except FileNotFoundError as err:
        raise BackendUnavailable(f"{argv[0]}: not found") from err
    except PermissionError as err:
        raise BackendUnavailable(f"{argv[0]}: permission denied") from err
    try:
        out, errout = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise CallTimeout(" ".join(argv), timeout_s) from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    return Completed(tuple(argv), proc.returncode if proc.returncode is not None else -1, out, errout)
