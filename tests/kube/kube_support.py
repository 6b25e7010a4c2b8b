"""Constants and fixtures shared by the Kubernetes and labels tests (a test API server per test, with the
project's RBAC manifest and a token file in tmp_path)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodeagent.testing.apiserver import TestApiServer

REPO = Path(__file__).resolve().parents[2]
RBAC = REPO / "container" / "kubernetes" / "rbac.yaml"
AGENT_TOKEN = "agent-token-1"
ADMIN_TOKEN = "admin-token"
NODE_TOKEN = "kubelet-node-a"
OUTSIDER_TOKEN = "outsider"
TOKENS = (
    f'{AGENT_TOKEN},system:serviceaccount:nodeagent:nodeagent,uid-1,"system:serviceaccounts"\n'
    f'{ADMIN_TOKEN},admin,uid-2,"system:masters"\n'
    f'{NODE_TOKEN},system:node:node-a,uid-3,"system:nodes"\n'
    f'{OUTSIDER_TOKEN},system:serviceaccount:other:agent,uid-4,"system:serviceaccounts"\n'
)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.csv"
    path.write_text(TOKENS)
    return path


@pytest.fixture
async def apiserver(token_file: Path) -> AsyncIterator[TestApiServer]:
    server = TestApiServer(token_file=token_file, rbac=RBAC, bookmark_interval_s=0.2, history=50)
    server.add_node("node-a")
    server.add_node("node-b")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
