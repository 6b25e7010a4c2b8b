"""A pod with ``nvidia.com/gpu: 1`` on the real kubelet sees exactly its GPU's device nodes, injected from the
CDI spec the agent wrote, and the agent's /metrics names that pod on that GPU's series (issue 21).

The node: 8 simulated H100s, a GPU node laid out under ``cluster.gpu_node`` (``support.write_gpu_node``: driver
files, and the simulated device nodes' twins, character devices 1:3, under ``run/nodeagent/sim-dev``); the CDI
subsystem writes its spec there, naming those twins as each device node's ``hostPath``. The device plugin and the
metrics subsystem run in this process on the cluster's root, the plugin registered on the kubelet's own
``kubelet.sock``, the metrics reading the kubelet's own pod-resources socket.

Injection: under containerd before 1.7 (no CDI of its own) the GPU Operator runs NVIDIA's runtime in CDI mode,
and so does this test: the pod's RuntimeClass picks the cluster's
``nodeagent-cdi`` handler (``CDI_RUNTIME_HANDLER``), whose runc is ``nvidia-container-runtime`` (built from its
Go module like nvidia-ctk) with ``mode = "cdi"``, the CDI annotations as its only source of devices
(``accept-nvidia-visible-devices-envvar-when-unprivileged = false``), and the agent's spec directory as its only
spec directory. So the plugin allocates with ``cdi-annotations`` (NVIDIA's CDI annotation strategy; the kubelet
copies the annotations onto the container, containerd passes ``cdi.k8s.io/*`` on to the OCI spec); an
envvar-only allocation injects nothing and the test fails. The cluster's containerd (2.x) resolves the
``cdi.k8s.io/*`` annotations itself too (the GPU node's spec directory is one of its CDI directories, and it
fails a container whose annotated devices it cannot resolve), so the same edits are applied twice, to the same
result (a CDI device node replaces one of the same path). The container is the static device probe
(``support.PROBE_IMAGE``) that lists its ``/dev/nvidia*`` (with their numbers) and then waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from integration.cluster.cluster import CDI_RUNTIME_HANDLER, Cluster
from integration.cluster.support import (
    PROBE_IMAGE,
    delete_pod,
    gpu_node_settings,
    host_network_pod,
    import_probe,
    node,
    probe_devices,
    probe_lines,
    wait_pod,
    write_gpu_node,
)
from integration.runtime import nvidia_ctk
from nodeagent import testing
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.backends.podresources import PodResourcesClient
from nodeagent.deviceplugin.subsystem import DevicePluginSubsystem
from nodeagent.metrics.subsystem import MetricsSubsystem
from nodeagent.settings import Settings, replace
from tests.support import require

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.cluster]

GPU = "nvidia.com/gpu"
POD = "cdi-gpu"
RUNTIME_CONFIG = """\
accept-nvidia-visible-devices-envvar-when-unprivileged = false

[nvidia-container-runtime]
debug = "{log}"
log-level = "debug"
mode = "cdi"
runtimes = ["{runc}"]

[nvidia-container-runtime.modes.cdi]
annotation-prefixes = ["cdi.k8s.io/"]
default-kind = "nvidia.com/gpu"
spec-dirs = ["{spec_dir}"]
"""


def allocatable(cluster: Cluster, resource: str) -> int:
    return int(node(cluster)["status"].get("allocatable", {}).get(resource, "0"))


async def until(check: Any, what: str, timeout_s: float = 60) -> None:
    """Wait for ``check()`` (a function or a coroutine function) to hold."""

    async def holds() -> bool:
        return bool(await check()) if asyncio.iscoroutinefunction(check) else bool(check())

    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await holds():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


def settings(cluster: Cluster) -> Settings:
    s = replace(Settings(), "gpuhealth", xid_window_s=5.0, min_publish_interval_s=1.0)
    s = replace(s, "deviceplugin", device_list_strategy=["cdi-annotations"])
    s = replace(s, "metrics", interval_s=1.0, pod_refresh_s=1.0)
    return gpu_node_settings(cluster, s)


def install_runtime(cluster: Cluster) -> None:
    """``nvidia-container-runtime`` in CDI mode as the ``nodeagent-cdi`` handler's runc."""
    try:
        binary = nvidia_ctk.ensure(tool=nvidia_ctk.RUNTIME)
    except nvidia_ctk.Unavailable as err:
        require(False, f"nvidia-container-runtime is not available: {err}")
        raise
    config_home = cluster.base / "etc/nodeagent-cdi-runtime"
    config = config_home / "nvidia-container-runtime/config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        RUNTIME_CONFIG.format(
            log=cluster.base / "var/log/nvidia-container-runtime.log",
            runc=shutil.which("runc") or "runc",
            spec_dir=cluster.gpu_node / "var/run/cdi",
        )
    )
    wrapper = cluster.cdi_runtime
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(f'#!/bin/sh\nexport XDG_CONFIG_HOME="{config_home}"\nexec "{binary}" "$@"\n')
    wrapper.chmod(0o755)


@contextlib.asynccontextmanager
async def agent_parts(
    cluster: Cluster, s: Settings, sim: SimGpuBackend
) -> AsyncIterator[tuple[DevicePluginSubsystem, TestClient]]:  # type: ignore[type-arg]
    """The device plugin and the metrics subsystem on the cluster's root; yields the plugin and a client of
    their HTTP routes."""
    ctx = testing.context(Root(cluster.base), s, gpus=sim, node_name=cluster.node_name)
    plugin, metrics = DevicePluginSubsystem(ctx), MetricsSubsystem(ctx)
    app = web.Application()
    for (method, path), handler in ctx.routes.items():
        app.router.add_route(method, path, handler)
    client: TestClient = TestClient(TestServer(app, host="127.0.0.1"))  # type: ignore[type-arg]
    await client.start_server()
    stop = asyncio.Event()
    await plugin.start()
    await metrics.start()
    tasks = [asyncio.create_task(t) for t in (ctx.gpu_state.run(stop), plugin.run(stop), metrics.run(stop))]
    try:
        yield plugin, client
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await metrics.stop()
        await plugin.stop()
        await client.close()
        await sim.close()


def gpu_series(text: str, field: str) -> dict[str, dict[str, str]]:
    """UUID → labels of ``field``'s series."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == field:
                out[sample.labels["UUID"]] = dict(sample.labels)
    return out


async def test_a_pod_sees_its_gpu_from_the_cdi_spec_and_the_metrics_name_it(cluster: Cluster) -> None:
    install_runtime(cluster)
    import_probe(cluster)
    runtime_class = "/apis/node.k8s.io/v1/runtimeclasses"
    cluster.admin.post(
        runtime_class,
        {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": CDI_RUNTIME_HANDLER},
         "handler": CDI_RUNTIME_HANDLER},
    )  # fmt: skip
    sim = SimGpuBackend("h100-80gb-hbm3", 8, 0)
    inv = await sim.inventory()
    s = settings(cluster)
    await write_gpu_node(cluster, inv, s)
    try:
        async with agent_parts(cluster, s, sim) as (plugin, client):
            # The kubelet keeps a plugin that went (an earlier test's) allocatable for a while: wait until it
            # watches this one, so that the pod is admitted through it.
            await until(lambda: GPU in plugin.servers and plugin.servers[GPU].streams > 0, "the kubelet watching")
            await until(lambda: allocatable(cluster, GPU) == 8, "8 nvidia.com/gpu allocatable")
            spec = host_network_pod(POD, runtime_class=CDI_RUNTIME_HANDLER, image=PROBE_IMAGE)
            spec["spec"]["containers"][0]["resources"] = {"limits": {GPU: "1"}}
            cluster.admin.post("/api/v1/namespaces/default/pods", spec)
            try:
                running = await asyncio.to_thread(
                    wait_pod, cluster, POD, "Running", lambda d: d["status"].get("phase") == "Running", 120
                )
                lines: list[str] | None = None

                def printed() -> bool:
                    nonlocal lines
                    lines = probe_lines(cluster, running)
                    return lines is not None

                await until(printed, "the probe's listing of /dev/nvidia*", timeout_s=30)
                assert lines is not None
                pods = PodResourcesClient(Root(cluster.base), s.kubelet.pod_resources_socket)
                try:
                    held = [c for c in await pods.list() if (c.namespace, c.pod) == ("default", POD)]
                finally:
                    await pods.close()
                assert [(c.container, c.resource_name, len(c.device_ids)) for c in held] == [("main", GPU, 1)]
                uuid = held[0].device_ids[0]
                gpu = next(g for g in inv.gpus if g.uuid == uuid)
                seen = probe_devices(lines)
                gpu_nodes = {p for p in seen if re.fullmatch(r"/dev/nvidia\d+", p)}
                # exactly its GPU's node, as the twin (1:3) the spec's hostPath names, and the control nodes
                assert gpu_nodes == {f"/dev/nvidia{gpu.minor_number}"}, lines
                assert {"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"} <= set(seen), lines
                assert set(seen.values()) == {"1:3"}, lines

                async def labelled() -> bool:
                    resp = await client.get("/metrics")
                    if resp.status != 200:
                        return False
                    series = gpu_series(await resp.text(), "DCGM_FI_DEV_GPU_TEMP")
                    return series.get(uuid, {}).get("pod") == POD

                await until(labelled, "the GPU's series labelled with the pod", timeout_s=30)
                series = gpu_series(await (await client.get("/metrics")).text(), "DCGM_FI_DEV_GPU_TEMP")
                assert len(series) == 8
                mine = series[uuid]
                assert (mine["pod"], mine["namespace"], mine["container"]) == (POD, "default", "main")
                assert mine["gpu"] == str(gpu.index) and mine["device"] == f"nvidia{gpu.index}"
                others = [labels for u, labels in series.items() if u != uuid]
                assert all("pod" not in o and "namespace" not in o and "container" not in o for o in others)
            finally:
                await asyncio.to_thread(delete_pod, cluster, POD)
    finally:
        cluster.admin.delete(f"{runtime_class}/{CDI_RUNTIME_HANDLER}")
        await asyncio.to_thread(shutil.rmtree, cluster.gpu_node, True)
