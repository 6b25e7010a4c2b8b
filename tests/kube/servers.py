"""The API server under test: one surface over the stand-in (``nodeagent/testing/apiserver``) and over the real
kube-apiserver of the session's cluster (``integration/cluster/server_under_test.py``), so that the
Kubernetes-facing tests make the same requests and the same assertions against both.

The ``apiserver`` fixture is parametrised ``test`` (the stand-in, fast) and ``real`` (marker ``cluster``:
``-m 'not cluster'`` leaves it out, ``make test-cluster`` runs only it). Each test starts with the Nodes
``node-a`` and ``node-b`` (labels ``kubernetes.io/hostname``, condition ``Ready``); on the real server they are
created for the test and deleted after it, with every Event, NodeFeature, RuntimeClass and Pod the test made,
so tests never see each other's objects.

Identities (``role``): ``agent`` (the ServiceAccount ``nodeagent/nodeagent`` bound by
``container/kubernetes/rbac.yaml``), ``admin`` (``system:masters``; the test's own setup and checks),
``node`` (the kubelet of ``node-a``: ``system:node:node-a`` in ``system:nodes``) and ``outsider`` (a
ServiceAccount of another namespace, granted nothing).

What only the stand-in can do (forced 503s, a rate limit, a token file re-read, compaction on demand,
exact counts of stored writes) is reached through ``StandIn.server``; tests that need it take the
``standin`` fixture instead of ``apiserver`` and are listed, with the reason, in docs/testing.md.
"""

from __future__ import annotations

import copy
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from nodeagent.kube.client import FunnelSettings, KubeClient
from nodeagent.kube.credentials import Credentials
from nodeagent.testing.apiserver import RESOURCES, TestApiServer, write_kubeconfig
from tests.kube.kube_support import ADMIN_TOKEN, AGENT_TOKEN, NODE_TOKEN, OUTSIDER_TOKEN, RBAC

AGENT_USER = "system:serviceaccount:nodeagent:nodeagent"
NODES = ("node-a", "node-b")
WRITE_VERBS = frozenset({"create", "update", "patch", "delete"})

# plural → (API path prefix, namespaced)
PATHS = {
    "nodes": ("/api/v1", False),
    "pods": ("/api/v1", True),
    "events": ("/api/v1", True),
    "namespaces": ("/api/v1", False),
    "runtimeclasses": ("/apis/node.k8s.io/v1", False),
    "nodefeatures": ("/apis/nfd.k8s-sigs.io/v1alpha1", True),
}


def path_of(plural: str, name: str = "", namespace: str = "", subresource: str = "") -> str:
    prefix, namespaced = PATHS[plural]
    path = prefix + (f"/namespaces/{namespace}" if namespaced and namespace else "") + f"/{plural}"
    return path + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")


class ServerUnderTest(Protocol):
    kind: str
    """``test`` (the stand-in) or ``real`` (kube-apiserver)."""

    @property
    def url(self) -> str: ...

    def token(self, role: str) -> str | None:
        """The bearer token of ``role``; None where the role authenticates by client certificate."""

    def credentials(self, role: str = "agent") -> Credentials: ...

    def ssl_context(self, role: str = "agent") -> ssl.SSLContext | None:
        """For a test's own raw HTTP requests (the CA, and the client certificate of a certificate role)."""

    def write_kubeconfig(self, path: Path, role: str = "agent", namespace: str = "nodeagent") -> None: ...

    def add_node(self, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]: ...

    def add_pod(self, name: str, namespace: str, node: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        """A running Pod bound to ``node`` (what a DaemonSet's pod looks like to a list)."""

    def object(self, plural: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        """What the server stores now (None when absent)."""

    def merge_patch(
        self, plural: str, name: str, patch: dict[str, Any], namespace: str = "", subresource: str = ""
    ) -> dict[str, Any]:
        """Another writer (the admin) changes the object now, as ``kubectl patch --type merge`` does."""

    def delete_object(self, plural: str, name: str, namespace: str = "") -> None: ...

    def events(self) -> list[dict[str, Any]]:
        """The stored Events about the test's Nodes."""

    def node_history(self, name: str) -> list[dict[str, Any]]:
        """Every stored version of the Node, oldest first (a version written and overwritten counts)."""

    def agent_writes(self) -> int:
        """Write requests (create, update, patch, delete) the agent's identity made so far in this test."""

    def agent_watches(self, plural: str) -> int:
        """Watch requests on ``plural`` the agent's identity started so far in this test."""

    def open_agent_watches(self, plural: str) -> int:
        """The agent's watches on ``plural`` that are open now."""


TOKENS_BY_ROLE = {"agent": AGENT_TOKEN, "admin": ADMIN_TOKEN, "node": NODE_TOKEN, "outsider": OUTSIDER_TOKEN}


class StandIn:
    """The surface over ``TestApiServer``: direct state access for setup and checks, no auth."""

    kind = "test"

    def __init__(self, server: TestApiServer) -> None:
        self.server = server

    @property
    def url(self) -> str:
        return self.server.url

    def token(self, role: str) -> str | None:
        return TOKENS_BY_ROLE[role]

    def credentials(self, role: str = "agent") -> Credentials:
        token = TOKENS_BY_ROLE[role]
        return Credentials(server=self.url, token=lambda: token, namespace="nodeagent")

    def ssl_context(self, role: str = "agent") -> ssl.SSLContext | None:
        return None

    def write_kubeconfig(self, path: Path, role: str = "agent", namespace: str = "nodeagent") -> None:
        write_kubeconfig(path, self.url, TOKENS_BY_ROLE[role], namespace=namespace)

    def add_node(self, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        return self.server.add_node(name, labels)

    def add_pod(self, name: str, namespace: str, node: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        return self.server.add_pod(name, namespace, node, labels)

    def object(self, plural: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        return self.server.object(plural, name, namespace)

    def merge_patch(
        self, plural: str, name: str, patch: dict[str, Any], namespace: str = "", subresource: str = ""
    ) -> dict[str, Any]:
        from nodeagent.testing import k8s_patch

        rt = next(r for r in RESOURCES if r.plural == plural)
        old = self.server.store.get(rt, namespace, name)
        assert old is not None, f"{plural}/{name} to patch"
        new = k8s_patch.merge_patch(old, copy.deepcopy(patch))
        if rt.status_subresource:
            new = {**old, "status": new["status"]} if subresource == "status" else {**new, "status": old["status"]}
        return self.server.store.put(rt, new, "MODIFIED")

    def delete_object(self, plural: str, name: str, namespace: str = "") -> None:
        self.server.delete_object(plural, name, namespace)

    def events(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (plural, _, _), o in self.server.store.objects.items() if plural == "events"]

    def node_history(self, name: str) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(obj)
            for _, plural, _, obj in self.server.store.history
            if plural == "nodes" and obj["metadata"]["name"] == name
        ]

    def agent_writes(self) -> int:
        return self.server.counters.writes[AGENT_USER]

    def agent_watches(self, plural: str) -> int:
        return self.server.counters.by_verb[("watch", plural)]

    def open_agent_watches(self, plural: str) -> int:
        return sum(1 for w in self.server.store.watchers if w.rt.plural == plural)


def kube_client(server: ServerUnderTest | TestApiServer, role: str = "agent", **funnel: Any) -> KubeClient:
    """A client of the agent's (``nodeagent.kube``) for ``role``; quick retries unless ``funnel`` says more."""
    surface = StandIn(server) if isinstance(server, TestApiServer) else server
    settings = {"timeout_s": 2.0, "max_attempts": 2, "backoff_initial_s": 0.01, **funnel}
    return KubeClient(surface.credentials(role), settings=FunnelSettings(**settings))


def switching_client(server: ServerUnderTest, first: str) -> tuple[KubeClient, list[str]]:
    """A client that presents the token ``first`` until the test puts another one in the returned slot (what
    a rotated token file does to the agent's credentials)."""
    slot = [first]
    creds = server.credentials("agent")
    creds.token = lambda: slot[0]
    settings = FunnelSettings(timeout_s=2.0, max_attempts=2, backoff_initial_s=0.01)
    return KubeClient(creds, settings=settings), slot


async def stand_in(token_file: Path) -> AsyncIterator[StandIn]:
    server = TestApiServer(token_file=token_file, rbac=RBAC, bookmark_interval_s=0.2, history=50)
    for name in NODES:
        server.add_node(name)
    await server.start()
    try:
        yield StandIn(server)
    finally:
        await server.stop()


@pytest.fixture
async def standin(token_file: Path) -> AsyncIterator[StandIn]:
    """The stand-in alone, for the tests that need what only it can do (listed in docs/testing.md)."""
    async for server in stand_in(token_file):
        yield server


@pytest.fixture(params=["test", pytest.param("real", marks=[pytest.mark.cluster, pytest.mark.integration])])
def server_kind(request: pytest.FixtureRequest) -> Any:
    """``test``, or (``real``) the session cluster's identities: the cluster starts on the first real test."""
    if request.param == "test":
        return "test"
    return request.getfixturevalue("real_identities")


@pytest.fixture
async def apiserver(server_kind: Any, token_file: Path) -> AsyncIterator[ServerUnderTest]:
    """The server under test, fresh for the test: the stand-in, or the session cluster's kube-apiserver."""
    if server_kind == "test":
        async for server in stand_in(token_file):
            yield server
        return
    from integration.cluster.server_under_test import RealServer

    real = RealServer(server_kind, NODES)
    real.setup()
    try:
        yield real
    finally:
        real.teardown()
