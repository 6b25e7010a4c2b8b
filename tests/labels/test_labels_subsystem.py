"""The labels subsystem end to end against the server under test (stand-in and real) and a sandbox root:
publishing, zero writes when converged, owned-key bookkeeping, MIG changes, revert, and degraded-not-dead on
API trouble."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent import events, testing
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.kube.client import KubeClient
from nodeagent.labels.publish_node import OWNED_ANNOTATION
from nodeagent.labels.subsystem import LabelsSubsystem, sysfs_pci_address
from nodeagent.settings import Settings, replace
from nodeagent.subsystem import Phase
from nodeagent.testing.apiserver import TestApiServer
from tests.kube.kube_support import RBAC, TOKENS
from tests.kube.servers import ServerUnderTest, kube_client, switching_client
from tests.support import until

NFD = "/etc/kubernetes/node-feature-discovery/features.d/nodeagent"
NF_NAME = "nvidia-features-for-node-a"


def settings(**labels: Any) -> Settings:
    base = replace(Settings(), "agent", state_dir="/var/lib/nodeagent")
    defaults: dict[str, Any] = {"start_jitter_s": 0.0, "retry_max_s": 1.0}
    return replace(base, "labels", **{**defaults, **labels})


async def sim_inventory(layout: str) -> Any:
    backend = SimGpuBackend("h100-80gb-hbm3", count=2, mig_layout=layout)
    try:
        return await backend.inventory()
    finally:
        await backend.close()


def make_sub(root: Path, s: Settings, backend: SimGpuBackend, client: KubeClient | None) -> LabelsSubsystem:
    ctx = testing.context(Root(root), s, gpus=backend, node_name="node-a")
    sub = LabelsSubsystem(ctx)
    sub.ctx.node.use(client)
    return sub


@pytest.fixture
async def backend() -> AsyncIterator[SimGpuBackend]:
    b = SimGpuBackend("h100-80gb-hbm3", count=2, mig_layout="3g.40gb*2")
    yield b
    await b.close()


ALL = {"node_patch": True, "node_feature": True, "runtime_classes": True, "mig_strategy": "mixed"}


async def test_nfd_file_only_written_once(tmp_path: Path, backend: SimGpuBackend) -> None:
    sub = make_sub(tmp_path, settings(), backend, None)
    await sub.start()
    assert sub.status().phase == Phase.RUNNING
    text = (tmp_path / NFD.lstrip("/")).read_text()
    assert "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3\n" in text
    assert await sub.refresh()
    assert sub.status().details["changed"] == []
    await sub.stop()


async def test_publishes_everywhere_then_writes_nothing(
    tmp_path: Path, apiserver: ServerUnderTest, backend: SimGpuBackend
) -> None:
    apiserver.merge_patch("nodes", "node-a", {"metadata": {"labels": {"team": "ml"}}})
    sub = make_sub(tmp_path, settings(**ALL), backend, kube_client(apiserver))
    await sub.start()
    assert sub.status().phase == Phase.RUNNING, sub.status().reason
    node = apiserver.object("nodes", "node-a")
    assert node is not None
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/mig-3g.40gb.count"] == "4"
    assert labels["team"] == "ml"
    assert "team" not in node["metadata"]["annotations"][OWNED_ANNOTATION].split(",")
    nf = apiserver.object("nodefeatures", NF_NAME, "nodeagent")
    assert nf is not None and nf["spec"]["labels"] == sub.labels
    assert nf["metadata"]["labels"] == {"nfd.node.kubernetes.io/node-name": "node-a"}
    rc = apiserver.object("runtimeclasses", "nvidia")
    assert rc is not None and rc["handler"] == "nvidia"
    (event,) = apiserver.events()
    assert event["reason"] == "GpuLabelsPublished" and event["involvedObject"]["uid"] == node["metadata"]["uid"]
    assert event["message"] == f"{len(sub.labels)} labels: Node/node-a, NodeFeature/nodeagent/{NF_NAME}"
    writes = apiserver.agent_writes()
    for _ in range(3):
        assert await sub.refresh()
    assert apiserver.agent_writes() == writes, "a converged node writes nothing"
    await sub.stop()


async def test_a_restart_keeps_the_published_timestamp(
    tmp_path: Path, apiserver: ServerUnderTest, backend: SimGpuBackend
) -> None:
    first = make_sub(tmp_path, settings(**ALL), backend, kube_client(apiserver))
    await first.start()
    await first.stop()
    writes = apiserver.agent_writes()
    second = make_sub(tmp_path, settings(**ALL), backend, kube_client(apiserver))
    second._timestamp += 100
    await second.start()
    await second.stop()
    assert apiserver.agent_writes() == writes
    assert second.labels["nvidia.com/gfd.timestamp"] == first.labels["nvidia.com/gfd.timestamp"]


async def test_mig_change_replaces_owned_keys_and_leaves_others(
    tmp_path: Path, apiserver: ServerUnderTest, backend: SimGpuBackend
) -> None:
    sub = make_sub(tmp_path, settings(**ALL), backend, kube_client(apiserver))
    await sub.start()
    stop = asyncio.Event()
    runner = asyncio.ensure_future(sub.run(stop))
    try:
        await asyncio.sleep(0.05)
        sub.ctx.bus.publish(events.MIG_CHANGED, await sim_inventory("1g.10gb*7"))

        async def converged() -> dict[str, str]:
            while True:
                node = apiserver.object("nodes", "node-a")
                labels = node["metadata"]["labels"] if node else {}
                if "nvidia.com/mig-1g.10gb.count" in labels:
                    return dict(labels)
                await asyncio.sleep(0.02)

        labels = await asyncio.wait_for(converged(), 2)
    finally:
        stop.set()
        await runner
        await sub.stop()
    assert labels["nvidia.com/mig-1g.10gb.count"] == "14"
    assert not any(k.startswith("nvidia.com/mig-3g.40gb") for k in labels)
    nfd = (tmp_path / NFD.lstrip("/")).read_text()
    assert "mig-1g.10gb.count=14" in nfd and "3g.40gb" not in nfd


async def test_removed_label_comes_back_through_the_watch(
    tmp_path: Path, apiserver: ServerUnderTest, backend: SimGpuBackend
) -> None:
    """Someone removes an owned label: the Node is stored without it, then the watch (not the hourly resync)
    wakes a refresh that puts it back."""
    from nodeagent.kube.resources import NODES

    key = "nvidia.com/gpu.count"
    sub = make_sub(tmp_path, settings(node_patch=True), backend, kube_client(apiserver))
    await sub.start()
    assert key in (apiserver.object("nodes", "node-a") or {})["metadata"]["labels"], "published at start"
    stop = asyncio.Event()
    runner = asyncio.ensure_future(sub.run(stop))
    try:
        await until(lambda: apiserver.open_agent_watches("nodes") > 0, "the Node watch")
        admin = kube_client(apiserver, "admin")
        removed = await admin.patch(NODES, "node-a", {"metadata": {"labels": {key: None}}})
        await admin.close()
        assert key not in removed["metadata"]["labels"], "the removal was stored"
        removed_rv = int(removed["metadata"]["resourceVersion"])

        await until(
            lambda: key in (apiserver.object("nodes", "node-a") or {})["metadata"]["labels"],
            "the label back",
            timeout_s=3,
        )
        versions = [
            (int(obj["metadata"]["resourceVersion"]), key in obj["metadata"].get("labels", {}))
            for obj in apiserver.node_history("node-a")
        ]
        assert (removed_rv, False) in versions
        assert any(present for rv, present in versions if rv > removed_rv), "it came back after the removal"
        assert sub.ctx.settings.labels.resync_s > 3, "not the resync: the watch woke the refresh"
    finally:
        stop.set()
        await runner
        await sub.stop()
        await sub.ctx.node.close()


async def test_plan_shows_the_node_label_diff(
    tmp_path: Path, apiserver: ServerUnderTest, backend: SimGpuBackend
) -> None:
    sub = make_sub(tmp_path, settings(node_patch=True, nfd_file=False), backend, kube_client(apiserver))
    plan = sub.plan(await sub.observe())
    (step,) = plan.steps
    assert step.action == "patch-node" and step.target == "Node/node-a"
    assert "+nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3" in step.diff
    await sub.stop()


async def test_revert_removes_only_what_the_agent_owns(
    tmp_path: Path, apiserver: ServerUnderTest, backend: SimGpuBackend
) -> None:
    apiserver.merge_patch("nodes", "node-a", {"metadata": {"labels": {"team": "ml"}}})
    sub = make_sub(tmp_path, settings(**ALL), backend, kube_client(apiserver))
    await sub.start()
    result = await sub.revert()
    await sub.stop()
    node = apiserver.object("nodes", "node-a")
    assert node is not None
    assert node["metadata"]["labels"] == {"kubernetes.io/hostname": "node-a", "team": "ml"}
    assert OWNED_ANNOTATION not in node["metadata"].get("annotations", {})
    assert apiserver.object("nodefeatures", NF_NAME, "nodeagent") is None
    assert apiserver.object("runtimeclasses", "nvidia") is None
    assert not (tmp_path / NFD.lstrip("/")).exists()
    assert NFD in result.changed


async def _run_until(sub: LabelsSubsystem, phase: Phase, timeout: float) -> None:
    while sub.status().phase != phase:
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(sub: LabelsSubsystem) -> AsyncIterator[None]:
    stop = asyncio.Event()
    runner = asyncio.ensure_future(sub.run(stop))
    try:
        yield
    finally:
        stop.set()
        await runner
        await sub.stop()


async def test_unreachable_api_server_degrades_then_converges(tmp_path: Path, backend: SimGpuBackend) -> None:
    """Stand-in only: it answers 503 until the test lets it come up."""
    (tmp_path / "tokens.csv").write_text(TOKENS)
    server = TestApiServer(token_file=tmp_path / "tokens.csv", rbac=RBAC)
    server.add_node("node-a")
    server.unavailable_retry_after = 0  # answering 503 until it "comes up"
    await server.start()
    sub = make_sub(tmp_path / "root", settings(node_patch=True), backend, kube_client(server))
    try:
        await sub.start()
        assert sub.status().phase == Phase.DEGRADED
        assert "no answer from" in sub.status().reason and "503" in sub.status().reason
        assert (tmp_path / "root" / NFD.lstrip("/")).exists(), "the file is written without the API server"
        async with running(sub):
            server.unavailable_retry_after = None
            await asyncio.wait_for(_run_until(sub, Phase.RUNNING, 5), 5)
        node = server.object("nodes", "node-a")
        assert node is not None and node["metadata"]["labels"]["nvidia.com/gpu.count"] == "2"
    finally:
        await server.stop()


async def test_expired_credentials_degrade_then_converge(
    tmp_path: Path, apiserver: ServerUnderTest, backend: SimGpuBackend
) -> None:
    client, token = switching_client(apiserver, "expired-token")
    sub = make_sub(tmp_path, settings(node_patch=True), backend, client)
    await sub.start()
    assert sub.status().phase == Phase.DEGRADED and "401" in sub.status().reason
    async with running(sub):
        token[0] = apiserver.token("agent") or ""  # the rotated token file
        await asyncio.wait_for(_run_until(sub, Phase.RUNNING, 5), 5)


async def test_forbidden_names_the_missing_grant_then_converges(
    tmp_path: Path, apiserver: ServerUnderTest, backend: SimGpuBackend
) -> None:
    """A ServiceAccount that rbac.yaml does not bind: refused, named; then the agent's own."""
    client, token = switching_client(apiserver, apiserver.token("outsider") or "")
    sub = make_sub(tmp_path, settings(node_patch=True), backend, client)
    await sub.start()
    reason = sub.status().reason
    assert sub.status().phase == Phase.DEGRADED
    assert 'get nodes "node-a" at the cluster scope: forbidden' in reason
    async with running(sub):
        token[0] = apiserver.token("agent") or ""
        await asyncio.wait_for(_run_until(sub, Phase.RUNNING, 5), 5)


async def test_missing_node_degrades_until_it_appears(
    tmp_path: Path, apiserver: ServerUnderTest, backend: SimGpuBackend
) -> None:
    apiserver.delete_object("nodes", "node-a")
    sub = make_sub(tmp_path, settings(node_patch=True, retry_max_s=300.0), backend, kube_client(apiserver))
    await sub.start()
    assert sub.status().phase == Phase.DEGRADED
    assert "Node node-a does not exist (yet)" in sub.status().reason
    (warning,) = apiserver.events()
    assert (warning["type"], warning["reason"]) == ("Warning", "GpuLabelsNotPublished")
    async with running(sub):
        await asyncio.sleep(0.1)
        apiserver.add_node("node-a")  # the watch sees it at once; no retry timer needed (300 s here)
        await asyncio.wait_for(_run_until(sub, Phase.RUNNING, 3), 3)
    node = apiserver.object("nodes", "node-a")
    assert node is not None and "nvidia.com/gpu.present" in node["metadata"]["labels"]


async def test_reads_pci_class_machine_type_and_vgpu_from_sysfs(tmp_path: Path, backend: SimGpuBackend) -> None:
    inventory = await backend.inventory()
    configs = json.loads((Path(__file__).parent / "fixtures" / "gfd" / "vgpu_pci_configs.json").read_text())
    passthrough = bytes(configs["passthrough"]["config"])
    for gpu in inventory.gpus:
        device = tmp_path / "sys/bus/pci/devices" / sysfs_pci_address(gpu.pci_bus_id)
        device.mkdir(parents=True)
        (device / "vendor").write_text("0x10de\n")
        (device / "class").write_text("0x030000\n")  # a VGA controller: graphics mode
        (device / "config").write_bytes(passthrough)
    bridge = tmp_path / "sys/bus/pci/devices/0000:00:01.0"
    bridge.mkdir()
    (bridge / "vendor").write_text("0x8086\n")
    (tmp_path / "sys/class/dmi/id").mkdir(parents=True)
    (tmp_path / "sys/class/dmi/id/product_name").write_text("PowerEdge XE9680\n")
    sub = make_sub(tmp_path, settings(), backend, None)
    await sub.start()
    await sub.stop()
    assert sub.labels["nvidia.com/gpu.mode"] == "graphics"
    assert sub.labels["nvidia.com/gpu.machine"] == "PowerEdge-XE9680"
    assert sub.labels["nvidia.com/vgpu.present"] == "false"


async def test_first_api_writes_wait_for_the_start_jitter(
    tmp_path: Path, apiserver: ServerUnderTest, backend: SimGpuBackend
) -> None:
    sub = make_sub(tmp_path, settings(node_patch=True, start_jitter_s=0.5), backend, kube_client(apiserver))
    sub._rng.seed(7)  # a draw well above zero
    await sub.start()
    assert sub.status().phase == Phase.RUNNING
    assert sub.status().details["first_api_writes_in_s"] > 0
    assert (tmp_path / NFD.lstrip("/")).exists(), "the file does not wait"
    node = apiserver.object("nodes", "node-a")
    assert node is not None and "nvidia.com/gpu.count" not in node["metadata"]["labels"]
    async with running(sub):

        async def published() -> None:
            while "nvidia.com/gpu.count" not in (apiserver.object("nodes", "node-a") or {})["metadata"]["labels"]:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(published(), 2)


async def test_kubeconfig_that_appears_later_is_picked_up(
    tmp_path: Path, apiserver: ServerUnderTest, backend: SimGpuBackend
) -> None:
    s = replace(settings(node_patch=True), "kube", mode="kubeconfig", kubeconfig="/etc/nodeagent/kubeconfig")
    ctx = testing.context(Root(tmp_path), s, gpus=backend, node_name="node-a")
    sub = LabelsSubsystem(ctx)
    await sub.start()
    assert sub.status().phase == Phase.DEGRADED
    assert "kube: cannot build the Kubernetes client: /etc/nodeagent/kubeconfig: cannot read" in sub.status().reason
    async with running(sub):
        (tmp_path / "etc/nodeagent").mkdir(parents=True)
        apiserver.write_kubeconfig(tmp_path / "etc/nodeagent/kubeconfig")
        await asyncio.wait_for(_run_until(sub, Phase.RUNNING, 5), 5)
    node = apiserver.object("nodes", "node-a")
    assert node is not None and node["metadata"]["labels"]["nvidia.com/gpu.count"] == "2"


async def test_one_shot_apply_and_revert_with_a_kubeconfig(
    tmp_path: Path, apiserver: ServerUnderTest, backend: SimGpuBackend
) -> None:
    (tmp_path / "etc/nodeagent").mkdir(parents=True)
    apiserver.write_kubeconfig(tmp_path / "etc/nodeagent/kubeconfig", namespace="nodeagent")
    s = replace(settings(**ALL), "kube", mode="kubeconfig", kubeconfig="/etc/nodeagent/kubeconfig")

    def one_shot() -> LabelsSubsystem:  # what `nodeagent apply` / `revert` build: no start(), no run()
        ctx = testing.context(Root(tmp_path), s, gpus=backend, node_name="node-a")
        return LabelsSubsystem(ctx)

    applier = one_shot()
    result = await applier.apply(applier.plan(await applier.observe()))
    assert f"NodeFeature/nodeagent/{NF_NAME}" in result.changed and "Node/node-a" in result.changed
    await applier.stop()
    reverter = one_shot()
    reverted = await reverter.revert()
    await reverter.stop()
    assert f"NodeFeature/nodeagent/{NF_NAME}" in reverted.changed
    assert apiserver.object("nodefeatures", NF_NAME, "nodeagent") is None
