"""Watches, conflicts and restarts for real (issue 20, point 5), counted in the API server's audit log.

The agent runs under its ServiceAccount (as in test_rbac). kube-apiserver is stopped by pid and started
again while etcd is compacted to its current revision, so the agent's resourceVersion is gone: its Node
watch must come back (a new watch after a relist), and it must not rewrite what has not changed. Then
another client edits the same Node (one of the agent's labels, a label and a condition of its own): the
agent's key converges back, and the other client's keys are never touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from integration.agent import simulated_agent
from integration.cluster.cluster import Cluster
from integration.cluster.support import NODE_PATH, agent_env, condition, node, sandbox_with_kubeconfig
from tests.support import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.cluster]

AGENT = "system:serviceaccount:nodeagent:nodeagent"
WRITES = {"create", "update", "patch", "delete"}


def agent_requests(cluster: Cluster, after: int) -> list[dict[str, Any]]:
    return [e for e in cluster.audit()[after:] if e["user"]["username"] == AGENT]


def on_nodes(entries: list[dict[str, Any]], verbs: set[str]) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("objectRef", {}).get("resource") == "nodes" and e["verb"] in verbs]


def test_restart_410_and_a_conflicting_writer(
    cluster: Cluster, agent_token: str, tmp_path: Path, node_restored: None
) -> None:
    sandbox_with_kubeconfig(cluster, tmp_path, agent_token)
    env = {**agent_env(cluster), "NODEAGENT_GPUHEALTH__TAINT": "false"}
    with simulated_agent(tmp_path, env) as agent:
        wait_until(
            lambda: (
                node(cluster)["metadata"]["labels"].get("nvidia.com/gpu.count") == "8"
                and (condition(node(cluster), "NvidiaGpuHealthy") or {}).get("status") == "True"
            ),
            timeout_s=60,
            what=f"the agent's labels and condition\n{agent.log.read_text()[-2000:]}",
        )
        wait_until(
            lambda: bool(on_nodes(agent_requests(cluster, 0), {"watch"})), timeout_s=30, what="the agent's Node watch"
        )
        mark = len(cluster.audit())

        cluster.restart_apiserver(compact_etcd=True)
        wait_until(
            lambda: bool(on_nodes(agent_requests(cluster, mark), {"watch"})),
            timeout_s=60,
            what=f"the Node watch re-established after the restart\n{agent.log.read_text()[-2000:]}",
        )
        after_restart = agent_requests(cluster, mark)
        assert on_nodes(after_restart, {"list"}), "the old resourceVersion is gone: the agent lists again"

        # Another writer: one of the agent's labels changed, a label and a condition of its own added.
        cluster.admin.merge_patch(
            NODE_PATH.format(cluster.node_name),
            {"metadata": {"labels": {"nvidia.com/gpu.count": "7", "example.com/owner": "other-client"}}},
        )
        other = {
            "type": "ExampleOther",
            "status": "True",
            "reason": "SetByAnotherClient",
            "message": "not the agent's",
            "lastHeartbeatTime": "2026-01-01T00:00:00Z",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
        conditions = [*node(cluster)["status"]["conditions"], other]
        cluster.admin.call(
            "PATCH",
            NODE_PATH.format(cluster.node_name) + "/status",
            {"status": {"conditions": [other]}},
            content_type="application/strategic-merge-patch+json",
        )
        assert condition(node(cluster), "ExampleOther") is not None, conditions
        wait_until(
            lambda: node(cluster)["metadata"]["labels"].get("nvidia.com/gpu.count") == "8",
            timeout_s=30,
            what="the agent's label repaired",
        )
        doc = node(cluster)
        assert doc["metadata"]["labels"]["example.com/owner"] == "other-client"
        assert condition(doc, "ExampleOther") == other
        assert (condition(doc, "NvidiaGpuHealthy") or {}).get("status") == "True"

        writes = on_nodes(agent_requests(cluster, mark), WRITES)
        summary = [(e["verb"], e["objectRef"].get("subresource", ""), e["responseStatus"]["code"]) for e in writes]
        print(f"agent's Node writes after the restart and the other writer: {summary}")
        # No write storm: at most one write to repair the label (and one status write after the restart).
        assert len(writes) <= 3, summary
        refused = [
            (e["verb"], e["objectRef"].get("resource"), e["responseStatus"]["code"])
            for e in agent_requests(cluster, mark)
            if e["verb"] in WRITES and e["responseStatus"]["code"] >= 400 and e["responseStatus"]["code"] != 409
        ]
        # A 409 is the other writer's change winning a race: the gateway reads again and retries (counted in
        # the write bound above). Nothing else may be refused.
        assert refused == [], refused
