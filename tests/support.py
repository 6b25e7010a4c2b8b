"""Helpers shared by unit and integration tests: ``from tests.support import require, free_port, wait_until``."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

import pytest

REQUIRE_INTEGRATION = os.environ.get("NODEAGENT_REQUIRE_INTEGRATION") == "1"


def require(condition: bool, reason: str) -> None:
    """Skip when a prerequisite is missing, or fail when CI says every prerequisite must be there."""
    if condition:
        return
    if REQUIRE_INTEGRATION:
        pytest.fail(f"integration prerequisite missing (NODEAGENT_REQUIRE_INTEGRATION=1): {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_until(
    predicate: Callable[[], object], what: str = "", *, timeout_s: float = 10.0, step_s: float = 0.01
) -> None:
    """Wait until ``predicate()`` is true: a state that the agent's tasks (in this loop) or a process beside the
    test reach, and that the test cannot await directly. Fails the test, naming ``what``, after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() >= deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what or _describe(predicate)}")
        await asyncio.sleep(step_s)


def wait_until_blocking(predicate: Callable[[], object], what: str, *, timeout_s: float, step_s: float = 0.05) -> None:
    """``wait_until`` for a test without an event loop (one that polls a daemon it started as a process)."""
    asyncio.run(wait_until(predicate, what, timeout_s=timeout_s, step_s=step_s))


def _describe(predicate: Callable[[], object]) -> str:
    code = getattr(predicate, "__code__", None)
    where = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
    return f"{getattr(predicate, '__qualname__', repr(predicate))}{where}"
