"""The real kube-apiserver of the session's cluster behind the surface of ``tests/kube/servers.py``, so that the
Kubernetes-facing unit tests run against it with the same assertions as against the stand-in.

- Identities (``RealIdentities``, once per session): the agent is the ServiceAccount ``nodeagent/nodeagent``
  of ``container/kubernetes/rbac.yaml`` (a TokenRequest token); the admin is the cluster's
  ``system:masters`` client certificate; ``node`` a client certificate ``system:node:node-a`` /
  ``system:nodes`` from the cluster's CA (the Node authorizer and NodeRestriction judge it); ``outsider`` a
  ServiceAccount ``other/agent`` bound to nothing.
- Per test (``RealServer``): the Nodes ``node-a`` and ``node-b`` are created (with a ``Ready`` condition, as
  the stand-in starts them; no kubelet runs for them) and deleted after the test, with the Events about them,
  the Pods the test added, and the NodeFeatures and RuntimeClasses that were not there before it.
- Every stored version of those Nodes comes from a watch the adapter holds (a thread), as the stand-in's
  history gives them; the agent's requests (writes, watches) come from the API server's audit log, which
  records the requests of the ``nodeagent`` namespace's ServiceAccounts (the admin is not among them).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from integration.cluster.api import Api, ApiError, create_all
from integration.cluster.cluster import Cluster
from integration.cluster.pki import KeyPair, client_cert
from nodeagent.kube.credentials import Credentials
from tests.kube.servers import AGENT_USER, WRITE_VERBS, path_of

TTL_ANNOTATION = "node.alpha.kubernetes.io/ttl"  # the TTL controller's first write to every new Node
CLUSTER_COMPONENTS = frozenset({"node-controller", "kubelet", "default-scheduler", "taint-eviction-controller"})
NOT_READY_TAINT = "node.kubernetes.io/not-ready"  # TaintNodesByCondition's, until the lifecycle controller lifts it


@dataclass
class RealIdentities:
    cluster: Cluster
    agent_token: str
    outsider_token: str
    node_cert: KeyPair

    @classmethod
    def make(cls, cluster: Cluster, agent_token: str) -> RealIdentities:
        admin = cluster.admin
        create_all(
            admin,
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}},
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "agent", "namespace": "other"}},
            ],
        )
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 7200},
        }
        outsider = admin.post("/api/v1/namespaces/other/serviceaccounts/agent/token", request)["status"]["token"]
        assert cluster.pki is not None
        node = client_cert(cluster.pki, "node-a", "/O=system:nodes/CN=system:node:node-a")
        return cls(cluster, agent_token, outsider, node)


class NodeHistory:
    """Every version of the named Nodes the API server stores, from a list and then a watch (a thread)."""

    def __init__(self, cluster: Cluster, names: tuple[str, ...]) -> None:
        self.cluster = cluster
        self.names = set(names)
        self.versions: list[dict[str, Any]] = []
        self.deleted: set[str] = set()
        self._lock = threading.Lock()
        self._conn: http.client.HTTPSConnection | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="node-history", daemon=True)
        self._ready = threading.Event()
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError(f"the Node history watch did not start: {self.error}")

    def stop(self) -> None:
        self._stopping = True
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj.get("metadata", {}).get("name")
        if name not in self.names:
            return
        with self._lock:
            if kind == "DELETED":
                self.deleted.add(name)
            else:
                self.deleted.discard(name)
                self.versions.append(obj)

    def _run(self) -> None:
        rv = str(self.cluster.admin.get("/api/v1/nodes")["metadata"]["resourceVersion"])
        ctx = _admin_ssl(self.cluster)
        while not self._stopping:
            conn = http.client.HTTPSConnection("127.0.0.1", self.cluster.ports["apiserver"], context=ctx, timeout=None)
            self._conn = conn
            try:
                conn.request("GET", f"/api/v1/nodes?watch=1&resourceVersion={rv}&allowWatchBookmarks=true")
                resp = conn.getresponse()
                if resp.status != 200:
                    raise RuntimeError(f"watch nodes: {resp.status} {resp.read()[:300]!r}")
                self._ready.set()
                for line in resp:
                    event = json.loads(line)
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        raise RuntimeError(f"watch nodes: {obj}")
                    rv = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._record(event["type"], obj)
            except (OSError, http.client.HTTPException, ValueError, RuntimeError) as err:
                if not self._stopping:
                    self.error = err
                    time.sleep(0.2)
            finally:
                conn.close()

    def of(self, name: str) -> list[dict[str, Any]]:
        """The versions seen so far, after waiting (bounded) until the watch has caught up with the server."""
        try:
            now: dict[str, Any] | None = self.cluster.admin.get(path_of("nodes", name))
        except ApiError as err:
            if err.status != 404:
                raise
            now = None
        deadline = time.monotonic() + 10
        while True:
            with self._lock:
                mine = [v for v in self.versions if v["metadata"]["name"] == name]
                caught_up = (
                    (name in self.deleted or not mine)
                    if now is None
                    else bool(mine and mine[-1]["metadata"]["resourceVersion"] == now["metadata"]["resourceVersion"])
                )
            if caught_up or time.monotonic() > deadline:
                return [json.loads(json.dumps(v)) for v in mine]
            time.sleep(0.01)


def _admin_ssl(cluster: Cluster) -> ssl.SSLContext:
    assert cluster.pki is not None
    ctx = ssl.create_default_context(cafile=str(cluster.pki.ca.cert))
    ctx.load_cert_chain(str(cluster.pki.admin.cert), str(cluster.pki.admin.key))
    return ctx


class AuditReader:
    """The agent's requests in the audit log since ``start`` (the log is read on from where it was)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.offset = log.stat().st_size if log.exists() else 0
        self.entries: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        if self.log.exists():
            with self.log.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]
            self.offset += len(complete)
            for line in complete.splitlines():
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if entry.get("user", {}).get("username") == AGENT_USER:
                        self.entries.append(entry)
        return self.entries


def _settled(node: dict[str, Any]) -> bool:
    taints = {t.get("key") for t in node.get("spec", {}).get("taints") or []}
    return TTL_ANNOTATION in (node["metadata"].get("annotations") or {}) and NOT_READY_TAINT not in taints


class RealServer:
    kind = "real"

    def __init__(self, ids: RealIdentities, nodes: tuple[str, ...]) -> None:
        self.ids = ids
        self.cluster = ids.cluster
        self.admin: Api = ids.cluster.admin
        self.nodes = nodes
        self.history = NodeHistory(self.cluster, nodes)
        self.audit = AuditReader(self.cluster.audit_log)
        self.pods: list[tuple[str, str]] = []
        self._before: dict[str, set[str]] = {}

    # ---- lifecycle

    def _names(self, plural: str, namespace: str = "") -> set[str]:
        return {o["metadata"]["name"] for o in self.admin.get(path_of(plural, namespace=namespace))["items"]}

    def setup(self) -> None:
        self._before = {"runtimeclasses": self._names("runtimeclasses"), "nodefeatures": self._names("nodefeatures")}
        for name in self.nodes:
            self._delete(path_of("nodes", name))
        self.history.start()
        for name in self.nodes:
            self.add_node(name)

    def teardown(self) -> None:
        self.history.stop()
        for namespace, name in self.pods:
            self.delete_object("pods", name, namespace)
        for event in self.events():
            self._delete(path_of("events", event["metadata"]["name"], "default"))
        for name in self.nodes:
            self._delete(path_of("nodes", name))
        for name in self._names("runtimeclasses") - self._before["runtimeclasses"]:
            self._delete(path_of("runtimeclasses", name))
        for name in self._names("nodefeatures") - self._before["nodefeatures"]:
            ns = "nodeagent"
            self._delete(path_of("nodefeatures", name, ns))

    def _delete(self, path: str, body: Any = None) -> None:
        try:
            self.admin.call("DELETE", path, body)
        except ApiError as err:
            if err.status != 404:
                raise

    # ---- identities

    @property
    def url(self) -> str:
        return self.cluster.url

    def token(self, role: str) -> str | None:
        return {"agent": self.ids.agent_token, "outsider": self.ids.outsider_token}.get(role)

    def _cert(self, role: str) -> KeyPair | None:
        assert self.cluster.pki is not None
        return {"admin": self.cluster.pki.admin, "node": self.ids.node_cert}.get(role)

    def credentials(self, role: str = "agent") -> Credentials:
        assert self.cluster.pki is not None
        token, cert = self.token(role), self._cert(role)
        return Credentials(
            server=self.url,
            token=(lambda: token) if token else None,
            namespace="nodeagent",
            ca_file=str(self.cluster.pki.ca.cert),
            cert_file=str(cert.cert) if cert else None,
            key_file=str(cert.key) if cert else None,
        )

    def ssl_context(self, role: str = "agent") -> ssl.SSLContext | None:
        assert self.cluster.pki is not None
        ctx = ssl.create_default_context(cafile=str(self.cluster.pki.ca.cert))
        cert = self._cert(role)
        if cert is not None:
            ctx.load_cert_chain(str(cert.cert), str(cert.key))
        return ctx

    def write_kubeconfig(self, path: Path, role: str = "agent", namespace: str = "nodeagent") -> None:
        token = self.token(role)
        assert token, f"a kubeconfig for {role}: only token roles"
        self.cluster.kubeconfig_for_token(path, token)
        doc = json.loads(path.read_text())
        doc["contexts"][0]["context"]["namespace"] = namespace
        path.write_text(json.dumps(doc, indent=1))

    # ---- objects

    def add_node(self, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }
        created: dict[str, Any] = self.admin.post(path_of("nodes"), node)
        # The cluster writes a new Node twice more: the TaintNodesByCondition admission plugin taints it
        # not-ready at creation, the node lifecycle controller lifts the taint once it sees Ready, and the TTL
        # controller annotates it. Wait for both, so they never race the test's writers.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = self.object("nodes", name)
            if found is not None and _settled(found):
                return found
            time.sleep(0.02)
        raise AssertionError(f"Node {name}: the cluster did not settle it in 20s: {created}")

    def add_pod(self, name: str, namespace: str, node: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        create_all(self.admin, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}])
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
            "spec": {
                "nodeName": node,
                "automountServiceAccountToken": False,
                "containers": [{"name": "main", "image": "example"}],
            },
        }
        deadline = time.monotonic() + 30
        while True:  # a new namespace's default ServiceAccount comes from a controller, a moment later
            try:
                self.admin.post(path_of("pods", namespace=namespace), pod)
                break
            except ApiError as err:
                if "serviceaccount" not in str(err.body) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.pods.append((namespace, name))
        return self.merge_patch("pods", name, {"status": {"phase": "Running"}}, namespace, "status")

    def object(self, plural: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.admin.get(path_of(plural, name, namespace))
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        return found

    def merge_patch(
        self, plural: str, name: str, patch: dict[str, Any], namespace: str = "", subresource: str = ""
    ) -> dict[str, Any]:
        done: dict[str, Any] = self.admin.merge_patch(path_of(plural, name, namespace, subresource), patch)
        return done

    def delete_object(self, plural: str, name: str, namespace: str = "") -> None:
        body = {"gracePeriodSeconds": 0} if plural == "pods" else None  # no kubelet runs for these Nodes
        self._delete(path_of(plural, name, namespace), body)

    def events(self) -> list[dict[str, Any]]:
        """The Events about the test's Nodes, less the cluster's own (the node lifecycle controller records
        ``RegisteredNode`` and ``RemovingNode`` about every Node, a moment after it is created or deleted)."""
        out: list[dict[str, Any]] = []
        for name in self.nodes:
            query = urllib.parse.urlencode({"fieldSelector": f"involvedObject.kind=Node,involvedObject.name={name}"})
            items = self.admin.get(path_of("events", namespace="default") + "?" + query)["items"]
            out += [e for e in items if (e.get("source") or {}).get("component") not in CLUSTER_COMPONENTS]
        return out

    def node_history(self, name: str) -> list[dict[str, Any]]:
        return self.history.of(name)

    # ---- the agent's requests, from the audit log

    def agent_writes(self) -> int:
        return sum(
            1 for e in self.audit.read() if e.get("stage") == "ResponseComplete" and e.get("verb") in WRITE_VERBS
        )

    def _watches(self, plural: str, stage: str) -> set[str]:
        return {
            e["auditID"]
            for e in self.audit.read()
            if e.get("verb") == "watch" and e.get("stage") == stage and e.get("objectRef", {}).get("resource") == plural
        }

    def agent_watches(self, plural: str) -> int:
        return len(self._watches(plural, "ResponseStarted"))

    def open_agent_watches(self, plural: str) -> int:
        return len(self._watches(plural, "ResponseStarted") - self._watches(plural, "ResponseComplete"))
