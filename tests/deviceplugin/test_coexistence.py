"""Beside NVIDIA's device plugin: a resource it serves (its socket) or the GPU Operator deploys it (the Node's
``nvidia.com/gpu.deploy.device-plugin`` label) is not registered by nodeagent, and /status says why."""

from __future__ import annotations

from pathlib import Path

from nodeagent.backends.hostfs import Root
from nodeagent.kube.resources import NODES
from nodeagent.testing.apiserver import TestApiServer
from tests.deviceplugin.support import PLUGIN_DIR, bind_socket, running, until
from tests.labels.test_labels_subsystem import kube_client

GPU = "nvidia.com/gpu"


async def test_yields_a_resource_nvidias_plugin_serves(tmp_path: Path) -> None:
    theirs = Root(tmp_path).resolve(PLUGIN_DIR)
    theirs.mkdir(parents=True)
    sock = bind_socket(theirs, "nvidia-gpu.sock")
    try:
        async with running(tmp_path) as r:
            await until(lambda: bool(r.plugin.yielded), "the plugin yielding nvidia.com/gpu")
            assert r.kubelet.registrations == []
            assert "NVIDIA's device plugin serves nvidia.com/gpu" in r.plugin.status().details["yielded"][GPU]
    finally:
        sock.close()


async def test_yields_while_the_operator_deploys_nvidias_plugin(tmp_path: Path, apiserver: TestApiServer) -> None:
    apiserver.store.objects[("nodes", "", "node-a")]["metadata"].setdefault("labels", {})[
        "nvidia.com/gpu.deploy.device-plugin"
    ] = "true"
    admin = kube_client(apiserver)
    async with running(tmp_path, kube=kube_client(apiserver)) as r:
        await until(lambda: bool(r.plugin.yielded), "the plugin yielding to the operator's plugin")
        assert "nvidia.com/gpu.deploy.device-plugin=true" in r.plugin.yielded[GPU]
        assert r.kubelet.registrations == []
        patch = {"metadata": {"labels": {"nvidia.com/gpu.deploy.device-plugin": "false"}}}
        await admin.patch(NODES, "node-a", patch)
        await r.kubelet.wait_for(lambda: r.kubelet.allocatable(GPU) == 2)
        assert not r.plugin.yielded
    await admin.close()
