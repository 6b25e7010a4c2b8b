"""Helpers shared by unit and integration tests: ``from tests.support import require, free_port, until``."""

from __future__ import annotations

import asyncio
import os
import socket
import time
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


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, what: str, step_s: float = 0.05) -> None:
    """Poll an external process's state (a daemon we cannot await) until true or fail after timeout. It blocks:
    a test that waits for the agent's own tasks (in its event loop) awaits ``until`` instead."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step_s)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


async def until(
    predicate: Callable[[], object], what: str = "", *, timeout_s: float = 10.0, step_s: float = 0.01
) -> None:
    """Wait until ``predicate()`` is true: a state the agent's tasks (in this loop) reach that the test cannot
    await directly. Fails the test, naming ``what``, after ``timeout_s``. The one such helper of the tests."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() >= deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what or _describe(predicate)}")
        await asyncio.sleep(step_s)


def _describe(predicate: Callable[[], object]) -> str:
    code = getattr(predicate, "__code__", None)
    where = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
    return f"{getattr(predicate, '__qualname__', repr(predicate))}{where}"
