"""The Node gateway: the agent's one Kubernetes client and one watch of its own Node, whatever subsystems use
the Node; its writes serialised; its watch supervised (a crash is restarted with backoff and shows in status)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nodeagent import testing
from nodeagent.app import Agent
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.compose import keep_sim_state
from nodeagent.gpuhealth.subsystem import GpuHealthSubsystem
from nodeagent.kube import client as kube_client_module
from nodeagent.kube.client import KubeClient
from nodeagent.kube.resources import NODES
from nodeagent.labels.node_status import MIG_CONFIG_LABEL, MIG_STATE_LABEL
from nodeagent.labels.subsystem import LabelsSubsystem
from nodeagent.mig.operands import PAUSED
from nodeagent.mig.subsystem import MigSubsystem
from nodeagent.model.gpu import SampleRequest
from nodeagent.model.health import CONDITION_TYPE
from nodeagent.nodegateway import NodeGateway
from nodeagent.settings import Settings, load, replace
from tests.core.fakes import Scripted
from tests.kube.servers import ServerUnderTest, kube_client
from tests.support import free_port, until

NODE = "node-a"
DEVICE_PLUGIN = "nvidia.com/gpu.deploy.device-plugin"


def node_watches(server: ServerUnderTest) -> int:
    return server.open_agent_watches("nodes")


def agent_settings(tmp_path: Path, server: ServerUnderTest) -> Settings:
    (tmp_path / "etc/nodeagent").mkdir(parents=True)
    server.write_kubeconfig(tmp_path / "etc/nodeagent/kubeconfig")
    s = replace(
        load(),
        "agent",
        listen=f"127.0.0.1:{free_port()}",
        state_dir="/var/lib/nodeagent",
        restart_backoff_initial_s=0.01,
        restart_backoff_max_s=0.04,
        shutdown_timeout_s=2.0,
    )
    s = replace(s, "kube", mode="kubeconfig", kubeconfig="/etc/nodeagent/kubeconfig")
    s = replace(s, "labels", node_patch=True, start_jitter_s=0.0, retry_max_s=1.0)
    s = replace(s, "mig", pause_operands=True, operand_wait_s=2.0)
    return replace(s, "gpuhealth", min_publish_interval_s=0.0)


async def test_labels_mig_and_gpuhealth_share_one_client_and_one_watch(
    tmp_path: Path, apiserver: ServerUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole agent (a driver stand-in, labels, mig, gpuhealth) built from a kubeconfig as the composition
    root builds it: every Node read, watch and write of the three goes through one client and one watch."""
    clients: list[KubeClient] = []
    real_init = KubeClient.__init__

    def counting_init(self: KubeClient, *args: Any, **kwargs: Any) -> None:
        clients.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(kube_client_module.KubeClient, "__init__", counting_init)
    admin = kube_client(apiserver, "admin")
    await admin.patch(NODES, NODE, {"metadata": {"labels": {DEVICE_PLUGIN: "true"}}})
    clients.clear()  # the test's own admin client is not the agent's

    settings = agent_settings(tmp_path, apiserver)
    sim = SimGpuBackend("h100-80gb-hbm3", 1, 0)
    keep_sim_state(sim, Root(tmp_path), settings)
    ctx = testing.context(Root(tmp_path), settings, gpus=sim, node_name=NODE)
    subsystems = [
        Scripted(ctx, name="driver"),
        LabelsSubsystem(ctx),
        MigSubsystem(ctx),
        GpuHealthSubsystem(ctx),
    ]
    subsystems[2].operands.poll_s = 0.05  # type: ignore[attr-defined]
    agent = Agent(testing.parts(ctx, subsystems))
    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: node_watches(apiserver) == 1, "the Node watched")
        await admin.patch(NODES, NODE, {"metadata": {"labels": {MIG_CONFIG_LABEL: "all-3g.40gb"}}})

        def node() -> dict[str, Any]:
            found = apiserver.object("nodes", NODE)
            assert found is not None
            return found

        await until(lambda: node()["metadata"]["labels"].get(MIG_STATE_LABEL) == "success", "MIG applied")
        sim.inject_xid(0, 79)
        await ctx.gpu_state.sample(SampleRequest(frozenset()))
        await until(
            lambda: any(
                c["type"] == CONDITION_TYPE and c["status"] == "False" for c in node()["status"].get("conditions", [])
            ),
            "health condition",
        )
        history = [o["metadata"]["labels"].get(DEVICE_PLUGIN) for o in apiserver.node_history(NODE)]
        assert PAUSED in history, "mig paused the operands through the gateway"
        assert node()["metadata"]["labels"][DEVICE_PLUGIN] == "true"
        assert node_watches(apiserver) == 1
        assert apiserver.agent_watches("nodes") == 1, "one watch connection, never a second"
        assert len(clients) == 1, f"one Kubernetes client in the process, not {len(clients)}"
        async with aiohttp.ClientSession() as http, http.get(f"http://{settings.agent.listen}/status") as resp:
            doc = await resp.json()
        assert doc["subsystems"]["labels"]["details"]["node_watch"]["watching"] is True
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, 10)
        await admin.close()
        await sim.close()
    await until(lambda: node_watches(apiserver) == 0, "the watch ends with the agent (the server notices)")


async def test_concurrent_writers_never_interleave_a_read_modify_write(apiserver: ServerUnderTest) -> None:
    """Two writers each read the Node and write a patch made from that read: serialised, neither conflicts."""
    client = kube_client(apiserver)
    gateway = NodeGateway(NODE, lambda settings: client)
    started: list[str] = []

    def bump(key: str) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
        def make(node: dict[str, Any]) -> dict[str, Any] | None:
            started.append(key)
            rv = node["metadata"]["resourceVersion"]
            return {"metadata": {"resourceVersion": rv, "labels": {key: "set"}}}

        return make

    try:
        await asyncio.gather(*(gateway.patch(bump(f"example.com/w{i}")) for i in range(4)))
        assert client.stats.by_status.get(409, 0) == 0, "a writer read the Node while another one wrote it"
        labels = (apiserver.object("nodes", NODE) or {})["metadata"]["labels"]
        assert {f"example.com/w{i}" for i in range(4)} <= set(labels)
        assert len(started) == 4
    finally:
        await gateway.close()


async def test_a_crashed_watch_is_restarted_with_backoff_and_shows_in_status(
    apiserver: ServerUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = kube_client(apiserver)
    gateway = NodeGateway(NODE, lambda settings: client)
    gateway.retry_max_s = 0.05
    real = client.watch_object
    crashes = [RuntimeError("a bug in the watch")]

    def watch_object(*args: Any, **kwargs: Any) -> Any:
        if crashes:
            raise crashes.pop()
        return real(*args, **kwargs)

    monkeypatch.setattr(client, "watch_object", watch_object)
    admin = kube_client(apiserver, "admin")
    try:
        async with gateway.observe() as changes:
            seen = await asyncio.wait_for(anext(changes), 5)  # the Node now, after the restart
            assert seen is not None and seen["metadata"]["name"] == NODE
            status = gateway.watch_status()
            assert status["restarts"] == 1 and "a bug in the watch" in status["crash"] and status["watching"]
            await admin.patch(NODES, NODE, {"metadata": {"labels": {"team": "ml"}}})
            while (seen or {}).get("metadata", {}).get("labels", {}).get("team") != "ml":
                seen = await asyncio.wait_for(anext(changes), 5)
        assert not gateway.watch_status()["watching"], "the watch stops with its last observer"
    finally:
        await gateway.close()
        await admin.close()


async def test_without_kubernetes_the_gateway_says_why(tmp_path: Path) -> None:
    ctx = testing.context(Root(tmp_path), replace(Settings(), "kube", mode="off"))
    assert ctx.node.client() is None
    assert "no API server configured" in ctx.node.problem
    with pytest.raises(Exception, match="no API server configured"):
        await ctx.node.get()


async def test_a_reload_of_the_kube_settings_moves_the_client_and_the_watch(apiserver: ServerUnderTest) -> None:
    """A settings reload that changes ``kube`` restarts labels, not the gateway: the next ``client()`` builds
    a client for the new settings, closes the old one, and the watch continues on the new client."""
    from nodeagent.settings import KubeSettings

    in_effect = [KubeSettings(timeout_s=2.0)]
    built: list[KubeClient] = []

    def connect(settings: KubeSettings) -> KubeClient:
        built.append(kube_client(apiserver))
        return built[-1]

    gateway = NodeGateway(NODE, connect, lambda: in_effect[0])
    admin = kube_client(apiserver, "admin")
    try:
        async with gateway.observe() as changes:
            assert await asyncio.wait_for(anext(changes), 5) is not None
            assert gateway.client() is built[0]
            in_effect[0] = KubeSettings(timeout_s=3.0)
            assert gateway.client() is built[1], "a new client for the new settings"
            await until(lambda: built[0]._session is None, "the old client closed")
            await until(lambda: apiserver.agent_watches("nodes") == 2, "the watch moved")
            await admin.patch(NODES, NODE, {"metadata": {"labels": {"team": "ml"}}})
            seen = None
            while (seen or {}).get("metadata", {}).get("labels", {}).get("team") != "ml":
                seen = await asyncio.wait_for(anext(changes), 5)
            assert gateway.client() is built[1] and len(built) == 2, "the same settings keep the client"
    finally:
        await gateway.close()
        await admin.close()


async def test_an_observer_after_a_pause_gets_the_node_as_it_is_now(apiserver: ServerUnderTest) -> None:
    """The watch stops with its last observer; the next observer's first view is the new watch's, not the
    Node as it was when nobody was looking."""
    client = kube_client(apiserver)
    gateway = NodeGateway(NODE, lambda settings: client)
    admin = kube_client(apiserver, "admin")
    try:
        async with gateway.observe() as changes:
            first = await asyncio.wait_for(anext(changes), 5)
            assert first is not None and "team" not in first["metadata"]["labels"]
        await admin.patch(NODES, NODE, {"metadata": {"labels": {"team": "ml"}}})
        async with gateway.observe() as changes:
            now = await asyncio.wait_for(anext(changes), 5)
            assert now is not None and now["metadata"]["labels"].get("team") == "ml"
    finally:
        await gateway.close()
        await admin.close()
