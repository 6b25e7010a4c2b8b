"""A pod with ``nvidia.com/gpu: 1`` on the real kubelet sees exactly its GPU's device nodes, injected from the
CDI spec the agent wrote, and the agent's /metrics names that pod on that GPU's series (issue 21).

The node: 8 simulated H100s, a GPU node laid out under ``cluster.base/gpu-node`` (driver files, and the
simulated device nodes' twins, character devices 1:3, under ``run/nodeagent/sim-dev``); the CDI subsystem
writes its spec there, naming those twins as each device node's ``hostPath``. The device plugin and the
metrics subsystem run in this process on the cluster's root, the plugin registered on the kubelet's own
``kubelet.sock``, the metrics reading the kubelet's own pod-resources socket.

Injection: containerd 1.6 (Debian 12's) has no CDI of its own. Under containerd before 1.7 the GPU Operator
runs NVIDIA's runtime in CDI mode, and so does this test: the pod's RuntimeClass picks the cluster's
``nodeagent-cdi`` handler (``CDI_RUNTIME_HANDLER``), whose runc is ``nvidia-container-runtime`` (built from its
Go module like nvidia-ctk) with ``mode = "cdi"``, the CDI annotations as its only source of devices
(``accept-nvidia-visible-devices-envvar-when-unprivileged = false``), and the agent's spec directory as its only
spec directory. So the plugin allocates with ``cdi-annotations`` (NVIDIA's CDI annotation strategy; the kubelet
copies the annotations onto the container, containerd passes ``cdi.k8s.io/*`` on to the OCI spec); an
envvar-only allocation injects nothing and the test fails. The container is a static probe that lists its
``/dev/nvidia*`` (with their numbers) and then waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from integration.cluster.cluster import CDI_RUNTIME_HANDLER, Cluster
from integration.cluster.support import delete_pod, host_network_pod, node, wait_pod
from integration.runtime import nvidia_ctk
from integration.runtime.conftest import build_static_image
from nodeagent import testing
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.backends.podresources import PodResourcesClient
from nodeagent.backends.sim import sandbox
from nodeagent.cdi.subsystem import CdiSubsystem
from nodeagent.deviceplugin.subsystem import DevicePluginSubsystem
from nodeagent.metrics.subsystem import MetricsSubsystem
from nodeagent.model.gpu import Inventory
from nodeagent.settings import Settings, replace
from tests.support import require

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.cluster]

GPU = "nvidia.com/gpu"
POD = "cdi-gpu"
PROBE_IMAGE = "localhost/nodeagent/devprobe:test"
PROBE_C = r"""
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
int main(void) {
  DIR *d = opendir("/dev");
  struct dirent *e;
  while (d && (e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, "nvidia", 6) != 0) continue;
    char path[300];
    struct stat st;
    snprintf(path, sizeof path, "/dev/%s", e->d_name);
    if (lstat(path, &st) != 0) continue;
    if (S_ISCHR(st.st_mode)) printf("char %s %u:%u\n", path, major(st.st_rdev), minor(st.st_rdev));
    else printf("other %s\n", path);
  }
  printf("probe done\n");
  fflush(stdout);
  for (;;) pause();
}
"""
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
NOOP_HOOK = "#!/bin/sh\n# nvidia-cdi-hook's stand-in: the simulated node has no driver to link or cache\nexit 0\n"


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


def settings(cluster: Cluster, node_dir: Path) -> Settings:
    s = replace(Settings(), "gpuhealth", xid_window_s=5.0, min_publish_interval_s=1.0)
    s = replace(s, "deviceplugin", device_list_strategy=["cdi-annotations"])
    s = replace(s, "metrics", interval_s=1.0, pod_refresh_s=1.0)
    hook = node_dir / "usr/bin/nvidia-cdi-hook"
    # The GPU node's spec, as its CDI subsystem writes it; the plugin on the cluster's root reads it there.
    spec = "/" + str((node_dir / "var/run/cdi/nvidia.yaml").relative_to(cluster.base))
    return replace(s, "cdi", spec_path=spec, hook_path=str(hook), driver_root_in_runtime=str(node_dir))


async def write_gpu_node(cluster: Cluster, node_dir: Path, inv: Inventory, s: Settings) -> None:
    """The GPU node's tree and the CDI spec its CDI subsystem writes (device nodes: the sim-dev twins)."""
    node_dir.mkdir()
    root = Root(node_dir)
    assert sandbox.populate_sandbox(root, inv)
    hook = Path(s.cdi.hook_path)
    hook.write_text(NOOP_HOOK)
    hook.chmod(0o755)
    spec_settings = replace(s, "cdi", spec_path="/var/run/cdi/nvidia.yaml")
    ctx = testing.context(root, spec_settings, inventory=inv, runtime_devices=True)
    cdi = CdiSubsystem(ctx)
    observed = await cdi.observe()
    await cdi.apply(cdi.plan(observed))
    assert cluster.base.joinpath(s.cdi.spec_path.lstrip("/")).is_file()


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
            spec_dir=cluster.base / "gpu-node/var/run/cdi",
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


def probe_lines(cluster: Cluster, doc: dict[str, Any]) -> list[str] | None:
    """The probe's output lines from the kubelet's container log, once it has printed them all."""
    uid = doc["metadata"]["uid"]
    logs = sorted(cluster.base.glob(f"var/log/pods/default_{POD}_{uid}/main/*.log"))
    if not logs:
        return None
    lines = [line.split(" ", 3)[3] for line in logs[-1].read_text().splitlines() if line.count(" ") >= 3]
    return lines if "probe done" in lines else None


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
    assert cluster.containerd is not None
    archive = build_static_image(cluster.base, PROBE_C, "devprobe", PROBE_IMAGE)
    cluster.containerd.ctr("-n", "k8s.io", "images", "import", str(archive))
    runtime_class = "/apis/node.k8s.io/v1/runtimeclasses"
    cluster.admin.post(
        runtime_class,
        {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": CDI_RUNTIME_HANDLER},
         "handler": CDI_RUNTIME_HANDLER},
    )  # fmt: skip
    sim = SimGpuBackend("h100-80gb-hbm3", 8, 0)
    inv = await sim.inventory()
    node_dir = cluster.base / "gpu-node"
    s = settings(cluster, node_dir)
    await write_gpu_node(cluster, node_dir, inv, s)
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
                seen = {line.split()[1]: line.split()[2] for line in lines if line.startswith("char ")}
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
        await asyncio.to_thread(shutil.rmtree, node_dir, True)
