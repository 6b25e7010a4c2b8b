"""Root conftest for tests/ and integration/: fails any async test that leaks asyncio tasks; loads the cluster plugin."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio

# The session's one real cluster (integration/cluster/plugin.py), for integration/cluster and tests/kube/servers.py.
pytest_plugins = ["integration.cluster.plugin"]


@pytest_asyncio.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks running in its loop (kopf's _no_asyncio_pending_tasks habit)."""
    before = set(asyncio.all_tasks())
    yield
    await asyncio.sleep(0)  # let tasks that were just cancelled finish
    leaked = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
    for task in leaked:
        task.cancel()
    assert not leaked, f"tasks left running: {sorted(t.get_name() for t in leaked)}"
