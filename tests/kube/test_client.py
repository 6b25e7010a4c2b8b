"""The request funnel against the server under test (the stand-in and the real kube-apiserver): retries,
Retry-After, 401/403/409/410 handling.

Stand-in only (the ``standin`` fixture), because only the stand-in can do it: a 429 on demand, a forced 503
with Retry-After, a token file the server re-reads, and a compaction that also ends the open watches. The
real server's 410 and watch restarts are proven in integration/cluster/test_watch.py."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest

from nodeagent.errors import ConfigError
from nodeagent.kube import credentials
from nodeagent.kube.client import (
    Conflict,
    Forbidden,
    FunnelSettings,
    KubeClient,
    NotFound,
    Unauthorized,
    Unreachable,
)
from nodeagent.kube.factory import make_client
from nodeagent.kube.resources import NODEFEATURES, NODES, RUNTIMECLASSES
from nodeagent.testing.apiserver import TestApiServer, write_kubeconfig
from tests.kube.kube_support import AGENT_TOKEN, RBAC
from tests.kube.servers import ServerUnderTest, StandIn
from tests.support import free_port


class Sleeps:
    """Records the waits the funnel asks for and returns at once."""

    def __init__(self, on_wait: Any = None) -> None:
        self.waits: list[float] = []
        self.on_wait = on_wait

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.on_wait is not None:
            self.on_wait()
        await asyncio.sleep(0.01 if seconds else 0)


def client_for(server: ServerUnderTest | TestApiServer, sleeps: Sleeps | None = None) -> KubeClient:
    if isinstance(server, TestApiServer):
        creds = credentials.Credentials(server=server.url, token=lambda: AGENT_TOKEN, namespace="nodeagent")
    else:
        creds = server.credentials("agent")
    return KubeClient(creds, settings=FunnelSettings(timeout_s=2, max_attempts=4), sleep=sleeps or Sleeps())


async def test_get_patch_and_forbidden_names_what_is_missing(apiserver: ServerUnderTest) -> None:
    async with client_for(apiserver) as client:
        node = await client.get(NODES, "node-a")
        assert node["metadata"]["name"] == "node-a"
        patched = await client.patch(NODES, "node-a", {"metadata": {"labels": {"x": "1"}}})
        assert patched["metadata"]["labels"]["x"] == "1"
        with pytest.raises(Forbidden) as err:
            await client.delete(NODES, "node-a")
        assert 'delete nodes "node-a" at the cluster scope' in str(err.value)
        assert "RBAC rules do not grant delete on nodes" in str(err.value)
        with pytest.raises(Forbidden, match='in namespace "kube-system"'):
            await client.list(NODEFEATURES, "kube-system")
        with pytest.raises(NotFound):
            await client.get(NODES, "missing")


async def test_429_waits_for_retry_after(token_file: Path) -> None:
    server = TestApiServer(token_file=token_file, rbac=RBAC, qps=0.5, burst=1)
    server.add_node("n")
    await server.start()

    def time_passes() -> None:
        server.limiter.qps = 1000.0

    sleeps = Sleeps(time_passes)
    try:
        async with client_for(server, sleeps=sleeps) as client:
            await client.get(NODES, "n")
            await client.get(NODES, "n")  # 429 first; admitted after the wait (the bucket refills)
    finally:
        await server.stop()
    assert client.stats.by_status == {200: 2, 429: 1}
    assert sleeps.waits == [2.0]


async def test_503_retry_after_then_success(standin: StandIn) -> None:
    sleeps = Sleeps()
    apiserver = standin.server
    apiserver.unavailable_retry_after = 3

    async def recover() -> None:
        while not sleeps.waits:
            await asyncio.sleep(0)
        apiserver.unavailable_retry_after = None

    async with client_for(standin, sleeps=sleeps) as client:
        _, node = await asyncio.gather(recover(), client.get(NODES, "node-a"))
    assert node["metadata"]["name"] == "node-a"
    assert sleeps.waits[0] == 3


async def test_unreachable_after_backoff_with_jitter() -> None:
    sleeps = Sleeps()
    creds = credentials.Credentials(server=f"http://127.0.0.1:{free_port()}", token=lambda: "t")
    settings = FunnelSettings(timeout_s=1, max_attempts=4, backoff_initial_s=1, backoff_max_s=3)
    async with KubeClient(creds, settings=settings, sleep=sleeps) as client:
        with pytest.raises(Unreachable, match="after 4 attempts"):
            await client.get(NODES, "n")
    assert len(sleeps.waits) == 4
    assert all(0 <= w <= cap for w, cap in zip(sleeps.waits, [1, 2, 3, 3], strict=True))


async def test_rotated_token_is_reread_from_its_file(standin: StandIn, tmp_path: Path, token_file: Path) -> None:
    apiserver = standin.server
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text(AGENT_TOKEN)
    (sa / "namespace").write_text("nodeagent")
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(apiserver.port)}
    creds = credentials.in_cluster(env, str(sa))
    assert creds.server == f"https://127.0.0.1:{apiserver.port}" and creds.namespace == "nodeagent"
    creds.server = apiserver.url  # the test server speaks plain HTTP
    async with KubeClient(creds, sleep=Sleeps()) as client:
        await client.get(NODES, "node-a")
        token_file.write_text(token_file.read_text().replace(AGENT_TOKEN, "rotated"))
        with pytest.raises(Unauthorized):
            await client.get(NODES, "node-a")
        (sa / "token").write_text("rotated")
        assert (await client.get(NODES, "node-a"))["metadata"]["name"] == "node-a"


async def test_modify_rereads_on_conflict(apiserver: ServerUnderTest) -> None:
    rc = {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"}, "handler": "nvidia"}
    calls = 0
    async with client_for(apiserver) as client:
        await client.create(RUNTIMECLASSES, rc)

        def mutate(current: dict[str, Any]) -> dict[str, Any] | None:
            nonlocal calls
            calls += 1
            if calls == 1:  # someone else writes between our read and our update
                apiserver.merge_patch("runtimeclasses", "nvidia", {"metadata": {"labels": {"other": "1"}}})
            if current["metadata"].get("labels", {}).get("mine") == "1":
                return None
            current["metadata"].setdefault("labels", {})["mine"] = "1"
            return current

        result = await client.modify(RUNTIMECLASSES, "nvidia", mutate)
    assert calls == 2
    assert result["metadata"]["labels"] == {"other": "1", "mine": "1"}


async def test_conflict_raised_when_it_never_settles(apiserver: ServerUnderTest) -> None:
    rc = {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "x"}, "handler": "x"}
    writes = 0
    async with client_for(apiserver) as client:
        await client.create(RUNTIMECLASSES, rc)

        def mutate(current: dict[str, Any]) -> dict[str, Any]:
            nonlocal writes
            writes += 1  # someone else writes between every read and its update
            apiserver.merge_patch("runtimeclasses", "x", {"metadata": {"labels": {"other": str(writes)}}})
            current["metadata"]["labels"] = {"n": str(writes)}
            return current

        with pytest.raises(Conflict, match="still conflicting"):
            await client.modify(RUNTIMECLASSES, "x", mutate)


async def test_watch_object_relists_after_410(standin: StandIn) -> None:
    seen: list[str] = []
    apiserver = standin.server
    async with client_for(apiserver) as client:
        stream = client.watch_object(NODES, "node-a", timeout_s=5)
        first = await anext(stream)
        assert first is not None and first["metadata"]["name"] == "node-a"
        await client.patch(NODES, "node-a", {"metadata": {"labels": {"step": "1"}}})
        second = await asyncio.wait_for(anext(stream), 5)
        assert second is not None
        seen.append(second["metadata"]["labels"]["step"])
        # The server forgets its history and ends the watch: the stream relists and goes on.
        apiserver.store.compact()
        for w in list(apiserver.store.watchers):
            w.queue.put_nowait(None)
        await client.patch(NODES, "node-a", {"metadata": {"labels": {"step": "2"}}})
        third = await asyncio.wait_for(anext(stream), 5)
        assert third is not None
        seen.append(third["metadata"]["labels"]["step"])
        await stream.aclose()
    assert seen == ["1", "2"]


def test_kubeconfig_token_cert_and_errors(tmp_path: Path) -> None:
    write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:1", "tok", namespace="ns1")
    creds = credentials.from_kubeconfig(tmp_path / "kc")
    assert (creds.server, creds.bearer(), creds.namespace) == ("http://127.0.0.1:1", "tok", "ns1")
    pem = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()
    (tmp_path / "kubelet.conf").write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: k\n"
        "clusters: [{name: c, cluster: {server: 'https://10.0.0.1:6443', certificate-authority: pki/ca.crt}}]\n"
        "users: [{name: u, user: {client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem,"
        " client-key: /var/lib/kubelet/pki/kubelet-client-current.pem}}]\n"
        "contexts: [{name: k, context: {cluster: c, user: u}}]\n"
    )
    kubelet = credentials.from_kubeconfig(tmp_path / "kubelet.conf")
    assert kubelet.token is None and kubelet.cert_file == "/var/lib/kubelet/pki/kubelet-client-current.pem"
    assert kubelet.ca_file == str(tmp_path / "pki" / "ca.crt")
    (tmp_path / "data.conf").write_text(
        "current-context: k\nclusters: [{name: c, cluster: {server: 'https://h'}}]\n"
        f"users: [{{name: u, user: {{client-certificate-data: {pem}, client-key-data: '!!'}}}}]\n"
        "contexts: [{name: k, context: {cluster: c, user: u}}]\n"
    )
    with pytest.raises(ConfigError, match=r"data.conf: client-key-data: is not valid base64"):
        credentials.from_kubeconfig(tmp_path / "data.conf")
    (tmp_path / "nouser.conf").write_text(
        "current-context: k\nclusters: [{name: c, cluster: {server: 'https://h'}}]\n"
        "users: [{name: u, user: {}}]\ncontexts: [{name: k, context: {cluster: c, user: u}}]\n"
    )
    with pytest.raises(ConfigError, match="neither a token nor a client certificate"):
        credentials.from_kubeconfig(tmp_path / "nouser.conf")
    with pytest.raises(ConfigError, match="no context named 'other'"):
        credentials.from_kubeconfig(tmp_path / "kc", context="other")


def test_factory_modes(tmp_path: Path) -> None:
    class S:
        mode = "auto"
        kubeconfig = ""
        context = ""
        namespace = ""
        timeout_s = 5.0
        max_attempts = 3

    assert make_client(S(), env={}) is None
    write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:1", "tok")
    s = S()
    s.kubeconfig = str(tmp_path / "kc")
    s.namespace = "agents"
    client = make_client(s, env={})
    assert client is not None and client.namespace == "agents" and client.settings.max_attempts == 3
    s.mode = "in-cluster"
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        make_client(s, env={})
