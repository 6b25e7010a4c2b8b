"""Constants and helpers shared by the Kubernetes tests."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RBAC = REPO / "container" / "kubernetes" / "rbac.yaml"
AGENT_TOKEN = "agent-token-1"
ADMIN_TOKEN = "admin-token"
NODE_TOKEN = "kubelet-node-a"
TOKENS = (
    f'{AGENT_TOKEN},system:serviceaccount:nodeagent:nodeagent,uid-1,"system:serviceaccounts"\n'
    f'{ADMIN_TOKEN},admin,uid-2,"system:masters"\n'
    f'{NODE_TOKEN},system:node:node-a,uid-3,"system:nodes"\n'
)
