"""The stand-in API server answers as the real one does for the rules the agent relies on: each test runs
against both (the ``apiserver`` fixture, tests/kube/servers.py), so a rule the stand-in gets wrong fails here.

Stand-in only (the ``standin`` fixture): a token file re-read on change, a watch from a version the stand-in
compacted on demand, the bookmark interval (the real server sends a bookmark about once a minute), the rate
limit and forced 503s."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from nodeagent.testing.apiserver import JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, TestApiServer
from tests.kube.kube_support import ADMIN_TOKEN, AGENT_TOKEN
from tests.kube.servers import ServerUnderTest, StandIn

NODES = "/api/v1/nodes"
NF = "/apis/nfd.k8s-sigs.io/v1alpha1/namespaces/nodeagent/nodefeatures"
RC = "/apis/node.k8s.io/v1/runtimeclasses"


async def call(
    server: ServerUnderTest | TestApiServer,
    method: str,
    path: str,
    body: Any = None,
    *,
    role: str = "agent",
    token: str | None = None,
    content_type: str = "application/json",
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    """One request as ``role`` (or with a raw ``token``): status, decoded body, headers."""
    ctx = None
    if isinstance(server, TestApiServer):
        token = token or {"agent": AGENT_TOKEN, "admin": ADMIN_TOKEN}[role]
    else:
        token = token or server.token(role)
        ctx = server.ssl_context(role)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = content_type
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, server.url + path, data=data, headers=headers, ssl=ctx or True) as resp,
    ):
        return resp.status, await resp.json(content_type=None), resp.headers


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


async def test_an_unknown_token_gets_401(apiserver: ServerUnderTest) -> None:
    status, body, _ = await call(apiserver, "GET", f"{NODES}/node-a", token="nope")
    assert (status, body["reason"]) == (401, "Unauthorized")
    assert (await call(apiserver, "GET", f"{NODES}/node-a"))[0] == 200


async def test_a_rotated_token_file_is_reread(standin: StandIn, token_file: Path) -> None:
    apiserver = standin.server
    assert (await call(apiserver, "GET", f"{NODES}/node-a"))[0] == 200
    token_file.write_text(token_file.read_text().replace(AGENT_TOKEN, "agent-token-2"))
    assert (await call(apiserver, "GET", f"{NODES}/node-a"))[0] == 401
    assert (await call(apiserver, "GET", f"{NODES}/node-a", token="agent-token-2"))[0] == 200


async def test_merge_patch_changes_labels_and_a_noop_keeps_the_version(apiserver: ServerUnderTest) -> None:
    _, before, _ = await call(apiserver, "GET", f"{NODES}/node-a")
    patch = {"metadata": {"labels": {"nvidia.com/gpu.count": "8"}}}
    status, after, _ = await call(apiserver, "PATCH", f"{NODES}/node-a", patch, content_type=MERGE_PATCH)
    assert status == 200 and after["metadata"]["labels"]["nvidia.com/gpu.count"] == "8"
    assert rv(after) > rv(before)
    _, again, _ = await call(apiserver, "PATCH", f"{NODES}/node-a", patch, content_type=MERGE_PATCH)
    assert rv(again) == rv(after)
    remove = {"metadata": {"labels": {"nvidia.com/gpu.count": None}}}
    _, removed, _ = await call(apiserver, "PATCH", f"{NODES}/node-a", remove, content_type=MERGE_PATCH)
    assert "nvidia.com/gpu.count" not in removed["metadata"]["labels"]
    assert removed["metadata"]["labels"]["kubernetes.io/hostname"] == "node-a"


async def test_stale_resource_version_conflicts(apiserver: ServerUnderTest) -> None:
    _, node, _ = await call(apiserver, "GET", f"{NODES}/node-a")
    stale = str(rv(node))
    await call(apiserver, "PATCH", f"{NODES}/node-a", {"metadata": {"labels": {"a": "1"}}}, content_type=MERGE_PATCH)
    patch = {"metadata": {"resourceVersion": stale, "labels": {"a": "2"}}}
    status, body, _ = await call(apiserver, "PATCH", f"{NODES}/node-a", patch, content_type=MERGE_PATCH)
    assert (status, body["reason"]) == (409, "Conflict")
    assert "the object has been modified" in body["message"]
    status, body, _ = await call(apiserver, "PUT", f"{NODES}/node-a", node, role="admin")
    assert status == 409


async def test_patch_content_types(apiserver: ServerUnderTest) -> None:
    status, body, _ = await call(apiserver, "PATCH", f"{NODES}/node-a", {"metadata": {}}, content_type="text/plain")
    assert (status, body["reason"]) == (415, "UnsupportedMediaType")
    status, body, _ = await call(
        apiserver, "PATCH", f"{NODES}/node-a", {"metadata": {}}, content_type="application/apply-patch+yaml"
    )
    assert status == 422 and "fieldManager: Required value" in body["message"], "server-side apply needs a manager"
    ops = [{"op": "add", "path": "/metadata/labels/nvidia.com~1gpu.present", "value": "true"}]
    status, node, _ = await call(apiserver, "PATCH", f"{NODES}/node-a", ops, content_type=JSON_PATCH)
    assert status == 200 and node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    failing = [{"op": "test", "path": "/metadata/labels/nvidia.com~1gpu.present", "value": "false"}]
    status, _, _ = await call(apiserver, "PATCH", f"{NODES}/node-a", failing, content_type=JSON_PATCH)
    assert status == 422


async def test_strategic_merge_patch_merges_conditions_by_type(apiserver: ServerUnderTest) -> None:
    patch = {"status": {"conditions": [{"type": "GpuHealthy", "status": "True"}]}}
    status, node, _ = await call(
        apiserver, "PATCH", f"{NODES}/node-a/status", patch, role="node", content_type=STRATEGIC_MERGE_PATCH
    )
    assert status == 200
    assert [c["type"] for c in node["status"]["conditions"]] == ["GpuHealthy", "Ready"], "a new one comes first"
    # The same content as a merge patch replaces the list.
    status, node, _ = await call(
        apiserver, "PATCH", f"{NODES}/node-a/status", patch, role="node", content_type=MERGE_PATCH
    )
    assert [c["type"] for c in node["status"]["conditions"]] == ["GpuHealthy"]


async def test_status_subresource_split(apiserver: ServerUnderTest) -> None:
    both = {"metadata": {"labels": {"x": "1"}}, "status": {"capacity": {"nvidia.com/gpu": "8"}}}
    _, node, _ = await call(apiserver, "PATCH", f"{NODES}/node-a", both, content_type=MERGE_PATCH)
    assert node["metadata"]["labels"]["x"] == "1" and "capacity" not in node["status"]
    _, node, _ = await call(apiserver, "PATCH", f"{NODES}/node-a/status", both, content_type=MERGE_PATCH)
    assert node["status"]["capacity"] == {"nvidia.com/gpu": "8"}


async def test_invalid_labels_get_422_naming_the_field(apiserver: ServerUnderTest) -> None:
    for labels in ({"nvidia.com/gpu.product": "x" * 64}, {"Bad_Prefix/x": "1"}, {"a": "-x"}):
        patch = {"metadata": {"labels": labels}}
        status, body, _ = await call(apiserver, "PATCH", f"{NODES}/node-a", patch, content_type=MERGE_PATCH)
        assert (status, body["reason"]) == (422, "Invalid"), labels
        assert body["details"]["causes"][0]["field"] == "metadata.labels"
        assert body["message"].startswith('Node "node-a" is invalid: metadata.labels: Invalid value:')


async def test_rbac_from_the_manifest(apiserver: ServerUnderTest) -> None:
    status, body, _ = await call(apiserver, "DELETE", f"{NODES}/node-a")
    assert status == 403
    assert body["message"] == (
        'nodes "node-a" is forbidden: User "system:serviceaccount:nodeagent:nodeagent" cannot delete resource '
        '"nodes" in API group "" at the cluster scope'
    )
    other_ns = "/apis/nfd.k8s-sigs.io/v1alpha1/namespaces/default/nodefeatures"
    status, body, _ = await call(apiserver, "GET", other_ns)
    assert status == 403 and 'in the namespace "default"' in body["message"]
    assert 'resource "nodefeatures" in API group "nfd.k8s-sigs.io"' in body["message"]
    status, body, _ = await call(apiserver, "PUT", f"{NODES}/node-a/status", {"metadata": {}})
    assert status == 403 and 'cannot update resource "nodes/status"' in body["message"]
    assert (await call(apiserver, "GET", NF))[0] == 200


async def test_node_authorizer_limits_a_kubelet_to_its_node(apiserver: ServerUnderTest) -> None:
    patch = {"metadata": {"labels": {"a": "1"}}}
    assert (await call(apiserver, "PATCH", f"{NODES}/node-a", patch, role="node", content_type=MERGE_PATCH))[0] == 200
    status, body, _ = await call(apiserver, "PATCH", f"{NODES}/node-b", patch, role="node", content_type=MERGE_PATCH)
    assert status == 403 and 'node "node-a" is not allowed to modify node "node-b"' in body["message"]


async def test_runtimeclass_rules(apiserver: ServerUnderTest) -> None:
    rc = {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"}, "handler": "nvidia"}
    status, created, _ = await call(apiserver, "POST", RC, rc)
    assert status == 201 and created["metadata"]["uid"]
    status, body, _ = await call(apiserver, "POST", RC, rc)
    assert (status, body["reason"]) == (409, "AlreadyExists")
    changed = {**created, "handler": "runc"}
    status, body, _ = await call(apiserver, "PUT", f"{RC}/nvidia", changed)
    assert status == 422 and "field is immutable" in body["message"]
    bad = {**rc, "metadata": {"name": "x"}, "handler": "Not_A_Label"}
    assert (await call(apiserver, "POST", RC, bad))[0] == 422


async def test_nodefeature_is_a_custom_resource(apiserver: ServerUnderTest) -> None:
    nf = {
        "apiVersion": "nfd.k8s-sigs.io/v1alpha1",
        "kind": "NodeFeature",
        "metadata": {"name": "nvidia-features-for-node-a", "labels": {"nfd.node.kubernetes.io/node-name": "node-a"}},
        "spec": {"labels": {"nvidia.com/gpu.count": "8"}},
    }
    status, created, _ = await call(apiserver, "POST", NF, nf)
    assert status == 201 and created["metadata"]["namespace"] == "nodeagent"
    status, _, _ = await call(
        apiserver, "PATCH", f"{NF}/{nf['metadata']['name']}", {"spec": {}}, content_type=STRATEGIC_MERGE_PATCH
    )
    assert status == 415
    unconditional = {**created, "metadata": {**created["metadata"], "resourceVersion": ""}}
    status, body, _ = await call(apiserver, "PUT", f"{NF}/{nf['metadata']['name']}", unconditional)
    assert status == 422 and "resourceVersion" in body["message"]


async def _watch_lines(server: ServerUnderTest | TestApiServer, query: str, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    if isinstance(server, TestApiServer):
        headers, ctx = {"Authorization": f"Bearer {AGENT_TOKEN}"}, None
    else:
        headers, ctx = {"Authorization": f"Bearer {server.token('agent')}"}, server.ssl_context()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{server.url}{NODES}?watch=true&{query}", headers=headers, ssl=ctx or True) as resp,
    ):
        async for line in resp.content:
            events.append(json.loads(line))
            if len(events) >= count:
                break
    return events


async def test_watch_from_a_version_by_field_selector(apiserver: ServerUnderTest) -> None:
    _, node, _ = await call(apiserver, "GET", f"{NODES}/node-a")
    start = rv(node)
    watcher = asyncio.ensure_future(
        _watch_lines(apiserver, f"resourceVersion={start}&fieldSelector=metadata.name%3Dnode-a", 1)
    )
    await call(apiserver, "PATCH", f"{NODES}/node-b", {"metadata": {"labels": {"b": "1"}}}, content_type=MERGE_PATCH)
    await call(apiserver, "PATCH", f"{NODES}/node-a", {"metadata": {"labels": {"a": "1"}}}, content_type=MERGE_PATCH)
    (event,) = await asyncio.wait_for(watcher, 5)
    assert event["type"] == "MODIFIED" and event["object"]["metadata"]["name"] == "node-a"
    assert event["object"]["metadata"]["labels"]["a"] == "1"


async def test_watch_bookmarks(standin: StandIn) -> None:
    apiserver = standin.server
    _, node, _ = await call(apiserver, "GET", f"{NODES}/node-a")
    start = rv(node)
    watcher = asyncio.ensure_future(
        _watch_lines(
            apiserver, f"resourceVersion={start}&allowWatchBookmarks=true&fieldSelector=metadata.name=node-a", 2
        )
    )
    await call(apiserver, "PATCH", f"{NODES}/node-b", {"metadata": {"labels": {"b": "1"}}}, content_type=MERGE_PATCH)
    await call(apiserver, "PATCH", f"{NODES}/node-a", {"metadata": {"labels": {"a": "1"}}}, content_type=MERGE_PATCH)
    events = await asyncio.wait_for(watcher, 5)
    assert events[0]["type"] == "MODIFIED" and events[0]["object"]["metadata"]["name"] == "node-a"
    assert events[1]["type"] == "BOOKMARK" and int(events[1]["object"]["metadata"]["resourceVersion"]) > start


async def test_watch_from_a_compacted_version_gets_410(standin: StandIn) -> None:
    apiserver = standin.server
    _, node, _ = await call(apiserver, "GET", f"{NODES}/node-a")
    apiserver.store.compact()
    await call(apiserver, "PATCH", f"{NODES}/node-a", {"metadata": {"labels": {"a": "1"}}}, content_type=MERGE_PATCH)
    events = await asyncio.wait_for(_watch_lines(apiserver, f"resourceVersion={rv(node)}", 1), 5)
    assert events[0]["type"] == "ERROR"
    assert (events[0]["object"]["code"], events[0]["object"]["reason"]) == (410, "Expired")


async def test_rate_limit_answers_429_with_retry_after(token_file: Path) -> None:
    server = TestApiServer(token_file=token_file, qps=0.5, burst=2)
    server.add_node("n")
    await server.start()
    try:
        codes = [(await call(server, "GET", f"{NODES}/n", role="admin")) for _ in range(3)]
    finally:
        await server.stop()
    assert [c[0] for c in codes] == [200, 200, 429]
    assert int(codes[2][2]["Retry-After"]) >= 1
    assert codes[2][1]["reason"] == "TooManyRequests"


async def test_unavailable_answers_503_with_retry_after(standin: StandIn) -> None:
    apiserver = standin.server
    apiserver.unavailable_retry_after = 2
    status, _, headers = await call(apiserver, "GET", f"{NODES}/node-a")
    assert status == 503 and headers["Retry-After"] == "2"
