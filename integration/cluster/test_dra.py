"""The DRA plugin on the real cluster (issue 22): the real kubelet's plugin watcher registers it, the real
scheduler allocates from its ResourceSlices, the real kubelet prepares and unprepares the claims, and the real
containerd injects the claim's devices.

Two containers share the pod's claim; both see exactly the claim's device node; an agent restart in between (its
transient CDI spec lost) rebuilds the spec from the checkpoint and leaves the pod running.

The plugin runs in this process on the cluster's root (``cluster.base``: the kubelet's root is
``base/var/lib/kubelet``, so the plugin registers in its ``plugins_registry``), with 8 simulated H100s, under
the agent's ServiceAccount (container/kubernetes/rbac.yaml), with NVIDIA's DeviceClasses
(container/kubernetes/deviceclasses.yaml). The GPUs are a simulated GPU node under ``cluster.gpu_node``
(``support.write_gpu_node``: its CDI spec names each device node's twin, a character device 1:3, as its
``hostPath``); the plugin builds each claim's CDI spec from that node spec, next to it, in one of the cluster's
containerd's CDI directories. The kubelet (1.34) hands a container its claim's CDI device IDs only in the CRI's
``CDIDevices`` (no annotations since 1.31), which the cluster's containerd (2.x, CDI always on) resolves
against those specs; the pods run the static device probe (``support.PROBE_IMAGE``), whose listing of
``/dev/nvidia*`` must be exactly the claim's GPU node and the control nodes. (Under the distribution's
containerd 1.6, which ignores ``CDIDevices``, or with no spec directory containerd reads, that check fails.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.cluster.api import create_all
from integration.cluster.cluster import PAUSE_IMAGE, Cluster
from integration.cluster.support import (
    PROBE_IMAGE,
    delete_pod,
    failed_scheduling,
    gpu_node_settings,
    import_probe,
    load,
    pod,
    probe_devices,
    probe_lines,
    until_async,
    write_gpu_node,
)
from nodeagent import testing
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.dra.subsystem import DraSubsystem
from nodeagent.kube.factory import make_client
from nodeagent.settings import KubeSettings, Settings, replace

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[2]
RESOURCE = "/apis/resource.k8s.io/v1"
CHECKPOINT = "/var/lib/kubelet/plugins/gpu.nvidia.com/checkpoint.json"
CONTROL_NODES = {"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"}
OTHER_MODEL = "device.attributes['gpu.nvidia.com'].productName == 'NVIDIA A100-SXM4-80GB'"


def settings() -> Settings:
    return replace(replace(Settings(), "deviceplugin", enabled=False), "dra", enabled=True)


@contextlib.asynccontextmanager
async def gpu_node_on(cluster: Cluster, s: Settings, sim: SimGpuBackend | None = None) -> AsyncIterator[None]:
    """The simulated GPU node of ``sim``'s GPUs (8 H100s by default) under ``cluster.gpu_node``, removed at the
    end; one already there (an enclosing ``gpu_node_on``) is used as it is."""
    if cluster.gpu_node.exists():
        yield
        return
    node_sim = sim or SimGpuBackend("h100-80gb-hbm3", 8, 0)
    try:
        await write_gpu_node(cluster, await node_sim.inventory(), gpu_node_settings(cluster, s))
    finally:
        if sim is None:
            await node_sim.close()
    try:
        yield
    finally:
        await asyncio.to_thread(shutil.rmtree, cluster.gpu_node, True)


@contextlib.asynccontextmanager
async def plugin_on(
    cluster: Cluster, token: str, tmp_path: Path, *, s: Settings | None = None, sim: SimGpuBackend | None = None
) -> AsyncIterator[DraSubsystem]:
    """The DRA plugin on the cluster's root, its node spec the simulated GPU node's (``gpu_node_on``)."""
    create_all(cluster.admin, load(REPO / "container/kubernetes/deviceclasses.yaml"))
    s = gpu_node_settings(cluster, s or settings())
    owned = sim is None
    sim = sim or SimGpuBackend("h100-80gb-hbm3", 8, 0)
    root = Root(cluster.base)
    ctx = testing.context(root, s, gpus=sim, node_name=cluster.node_name)
    kubeconfig = cluster.kubeconfig_for_token(tmp_path / "kubeconfig", token)
    client = make_client(KubeSettings(mode="kubeconfig", kubeconfig=str(kubeconfig), namespace="nodeagent"))
    ctx.node.use(client)
    async with gpu_node_on(cluster, s, sim):
        plugin = DraSubsystem(ctx)
        stop = asyncio.Event()
        await plugin.start()
        tasks = [asyncio.create_task(ctx.gpu_state.run(stop)), asyncio.create_task(plugin.run(stop))]
        try:
            await until_async(lambda: plugin.registration.registered is True, "the kubelet's registration", 60)
            yield plugin
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await plugin.stop()
            await ctx.node.close()
            if owned:
                await sim.close()


def claim_spec_path(cluster: Cluster, uid: str) -> str:
    """Where the plugin writes the claim's CDI spec, on the cluster's root: next to the GPU node's spec."""
    spec = gpu_node_settings(cluster, settings()).cdi.spec_path
    return f"{spec.rsplit('/', 1)[0]}/k8s.gpu.nvidia.com-claim_{uid}.yaml"


def template_claim(cluster: Cluster, doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ResourceClaim the pod's one template made, and its one allocation result."""
    (status,) = doc["status"]["resourceClaimStatuses"]
    claim: dict[str, Any] = cluster.admin.get(
        f"{RESOURCE}/namespaces/{doc['metadata']['namespace']}/resourceclaims/{status['resourceClaimName']}"
    )
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    return claim, result


def slices(cluster: Cluster) -> list[dict[str, Any]]:
    path = f"{RESOURCE}/resourceslices?fieldSelector=spec.nodeName%3D{cluster.node_name}"
    items: list[dict[str, Any]] = cluster.admin.get(path)["items"]
    return items


def claim_pod(
    name: str, claim: dict[str, str], containers: tuple[str, ...] = ("main", "sidecar"), image: str = PAUSE_IMAGE
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "hostNetwork": True,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 5,
            "resourceClaims": [{"name": "gpu", **claim}],
            "containers": [  # two containers sharing the one claim
                {
                    "name": name,
                    "image": image,
                    "imagePullPolicy": "Never",
                    "resources": {"claims": [{"name": "gpu"}]},
                }
                for name in containers
            ],
        },
    }


async def probed(cluster: Cluster, doc: dict[str, Any], container: str) -> dict[str, str]:
    """The device probe's character devices in the pod's ``container`` (path → major:minor)."""
    lines: list[str] | None = None

    def printed() -> bool:
        nonlocal lines
        lines = probe_lines(cluster, doc, container)
        return lines is not None

    await until_async(printed, f"the probe's listing of /dev/nvidia* in {container}", timeout_s=30)
    assert lines is not None
    return probe_devices(lines)


def running(cluster: Cluster, name: str) -> bool:
    doc = pod(cluster.admin, name)
    return doc is not None and doc["status"].get("phase") == "Running"


def _delete(cluster: Cluster, path: str) -> None:
    with contextlib.suppress(Exception):
        cluster.admin.call("DELETE", path)


async def test_a_claim_template_pod_runs_a_mismatch_stays_pending_an_agent_restart_keeps_it_deleting_unprepares(
    cluster: Cluster, agent_token: str, tmp_path: Path
) -> None:
    root = Root(cluster.base)
    template = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "one-gpu", "namespace": "default"},
        "spec": {
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}}
        },
    }
    other_model = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "an-a100", "namespace": "default"},
        "spec": {
            "devices": {
                "requests": [
                    {
                        "name": "gpu",
                        "exactly": {
                            "deviceClassName": "gpu.nvidia.com",
                            "selectors": [{"cel": {"expression": OTHER_MODEL}}],
                        },
                    }
                ]
            }
        },
    }
    create_all(cluster.admin, [template, other_model])
    import_probe(cluster)
    try:
        async with gpu_node_on(cluster, settings()):  # one GPU node for both agents
            async with plugin_on(cluster, agent_token, tmp_path) as plugin:
                await until_async(lambda: len(slices(cluster)) == 1, "the node's ResourceSlice")
                (sl,) = slices(cluster)
                assert sl["spec"]["driver"] == "gpu.nvidia.com"
                assert plugin.inventory is not None
                minors = [g.minor_number for g in plugin.inventory.gpus]
                assert [d["name"] for d in sl["spec"]["devices"]] == [f"gpu-{m}" for m in minors]
                cluster.admin.post(
                    "/api/v1/namespaces/default/pods",
                    claim_pod("dra-one", {"resourceClaimTemplateName": "one-gpu"}, image=PROBE_IMAGE),
                )
                cluster.admin.post(
                    "/api/v1/namespaces/default/pods", claim_pod("dra-a100", {"resourceClaimName": "an-a100"})
                )
                await until_async(
                    lambda: running(cluster, "dra-one"), "the pod with a gpu.nvidia.com claim Running", 90
                )
                doc = pod(cluster.admin, "dra-one")
                assert doc is not None
                claim, result = template_claim(cluster, doc)
                uid = claim["metadata"]["uid"]
                assert (result["driver"], result["pool"]) == ("gpu.nvidia.com", cluster.node_name)
                spec_path = claim_spec_path(cluster, uid)
                spec = yaml.safe_load(root.read_bytes(spec_path) or b"")
                assert [d["name"] for d in spec["devices"]] == [f"{uid}-{result['device']}"]
                saved = json.loads(root.read_bytes(CHECKPOINT) or b"{}")
                assert [d["device"] for d in saved["claims"][uid]["devices"]] == [result["device"]]
                assert plugin.server.calls["prepare"] == 1  # one claim, two containers: prepared once
                (gpu,) = [g for g in plugin.inventory.gpus if f"gpu-{g.minor_number}" == result["device"]]
                seen = [await probed(cluster, doc, container) for container in ("main", "sidecar")]
                # exactly the claim's GPU node, as the twin (1:3) its spec names, and the control nodes
                for devices in seen:
                    gpu_nodes = {p for p in devices if re.fullmatch(r"/dev/nvidia\d+", p)}
                    assert gpu_nodes == {f"/dev/nvidia{gpu.minor_number}"}, devices
                    assert set(devices) >= CONTROL_NODES, devices
                    assert set(devices.values()) == {"1:3"}, devices
                assert seen[0] == seen[1]

                await until_async(
                    lambda: failed_scheduling(cluster.admin, "dra-a100", "cannot allocate all claims"),
                    "FailedScheduling: cannot allocate all claims",
                    timeout_s=60,
                )
                pending = pod(cluster.admin, "dra-a100")
                assert pending is not None and pending["status"].get("phase") == "Pending"

            # An agent restart that lost the transient spec (a reboot empties /var/run): the checkpoint rebuilds it,
            # the running pod is left alone, and the new agent unprepares when the pod goes.
            root.remove(spec_path)
            async with plugin_on(cluster, agent_token, tmp_path) as plugin:
                assert yaml.safe_load(root.read_bytes(spec_path) or b"") == spec
                assert running(cluster, "dra-one")
                await asyncio.to_thread(delete_pod, cluster, "dra-one")
                await until_async(lambda: not root.exists(spec_path), "the claim's CDI spec removed", timeout_s=60)
                saved = json.loads(root.read_bytes(CHECKPOINT) or b"{}")
                assert uid not in saved["claims"]
                assert plugin.server.calls["unprepare"] >= 1
    finally:
        await asyncio.to_thread(delete_pod, cluster, "dra-one")
        await asyncio.to_thread(delete_pod, cluster, "dra-a100")
        _delete(cluster, f"{RESOURCE}/namespaces/default/resourceclaims/an-a100")
        _delete(cluster, f"{RESOURCE}/namespaces/default/resourceclaimtemplates/one-gpu")


def _claim_of(cluster: Cluster, name: str) -> dict[str, Any]:
    """The ResourceClaim named like the pod (these pods name theirs: ``resourceClaimName``)."""
    claim: dict[str, Any] = cluster.admin.get(f"{RESOURCE}/namespaces/default/resourceclaims/{name}")
    return claim


def _device_of(cluster: Cluster, pod_name: str) -> str:
    (result,) = _claim_of(cluster, pod_name)["status"]["allocation"]["devices"]["results"]
    return str(result["device"])


def _taints(cluster: Cluster, device: str) -> list[tuple[str, str, str]]:
    found = [d for sl in slices(cluster) for d in sl["spec"]["devices"] if d["name"] == device]
    return [(t["key"], t.get("value", ""), t["effect"]) for d in found for t in d.get("taints") or []]


def _one_gpu_claim(name: str, cel: str = "") -> dict[str, Any]:
    exactly: dict[str, Any] = {"deviceClassName": "gpu.nvidia.com"}
    if cel:
        exactly["selectors"] = [{"cel": {"expression": cel}}]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}},
    }


async def test_an_xid_79_taints_the_pods_device_the_scheduler_avoids_it_and_the_taint_goes_after_the_hold(
    cluster: Cluster, agent_token: str, tmp_path: Path
) -> None:
    """The real apiserver keeps the device taint (gate DRADeviceTaints), the real scheduler honours it: a claim
    that can only have the tainted GPU stays pending, another lands elsewhere; after the XID window it goes and
    the pending claim gets the GPU."""
    s = replace(settings(), "gpuhealth", xid_window_s=40.0, min_publish_interval_s=0.0)
    sim = SimGpuBackend("h100-80gb-hbm3", 8, 0)
    names = ("taint-first", "taint-pinned", "taint-other")
    try:
        async with plugin_on(cluster, agent_token, tmp_path, s=s, sim=sim) as plugin:
            await until_async(lambda: len(slices(cluster)) == 1, "the node's ResourceSlice")
            create_all(cluster.admin, [_one_gpu_claim("taint-first")])
            cluster.admin.post(
                "/api/v1/namespaces/default/pods",
                claim_pod("taint-first", {"resourceClaimName": "taint-first"}, ("main",)),
            )
            await until_async(lambda: running(cluster, "taint-first"), "the first pod Running", 90)
            device = _device_of(cluster, "taint-first")
            published = {d.name: d for d in plugin.published}
            writes = plugin.slice_writes
            sim.inject_xid(published[device].gpu_index, 79)
            await until_async(lambda: bool(_taints(cluster, device)), "the device's taint in the slice", timeout_s=20)
            assert _taints(cluster, device) == [("gpu.nvidia.com/xid", "79", "NoSchedule")]
            assert plugin.slice_writes == writes + 1  # one health change, one slice write
            assert running(cluster, "taint-first")  # NoSchedule: the running pod keeps its GPU
            await asyncio.to_thread(delete_pod, cluster, "taint-first")
            uuid = published[device].uuid
            pinned = f"device.attributes['gpu.nvidia.com'].uuid == '{uuid}'"
            create_all(cluster.admin, [_one_gpu_claim("taint-pinned", pinned), _one_gpu_claim("taint-other")])
            for name in ("taint-pinned", "taint-other"):
                cluster.admin.post(
                    "/api/v1/namespaces/default/pods", claim_pod(name, {"resourceClaimName": name}, ("main",))
                )
            await until_async(lambda: running(cluster, "taint-other"), "the other pod Running", 90)
            assert _device_of(cluster, "taint-other") != device
            await until_async(
                lambda: failed_scheduling(cluster.admin, "taint-pinned", "cannot allocate all claims"),
                "FailedScheduling of the claim that can only have the tainted GPU",
                timeout_s=30,
            )
            assert _taints(cluster, device), "the taint went before the pinned pod was seen pending"
            await until_async(lambda: not _taints(cluster, device), "the taint gone after the XID window", 90)
            await until_async(lambda: running(cluster, "taint-pinned"), "the pinned pod Running on the GPU again", 120)
            assert _device_of(cluster, "taint-pinned") == device
    finally:
        for name in names:
            await asyncio.to_thread(delete_pod, cluster, name)
            _delete(cluster, f"{RESOURCE}/namespaces/default/resourceclaims/{name}")
        await sim.close()


async def test_a_kubelet_restart_keeps_the_running_pods_device(
    cluster: Cluster, agent_token: str, tmp_path: Path
) -> None:
    """The real kubelet restarted under a running pod with a claim: its plugin watcher registers the plugin
    again, the kubelet's start wipes the node's slices and the plugin publishes them again, the pod keeps its
    container, its claim's CDI spec and checkpoint entry; the new kubelet unprepares it when the pod goes."""
    root = Root(cluster.base)
    create_all(cluster.admin, [_one_gpu_claim("restart-gpu")])
    try:
        async with plugin_on(cluster, agent_token, tmp_path) as plugin:
            cluster.admin.post(
                "/api/v1/namespaces/default/pods",
                claim_pod("dra-restart", {"resourceClaimName": "restart-gpu"}, ("main",)),
            )
            await until_async(lambda: running(cluster, "dra-restart"), "the pod with its claim Running", 90)
            before = pod(cluster.admin, "dra-restart")
            assert before is not None
            container = before["status"]["containerStatuses"][0]["containerID"]
            uid = _claim_of(cluster, "restart-gpu")["metadata"]["uid"]
            spec_path = claim_spec_path(cluster, uid)
            spec = root.read_bytes(spec_path)
            assert spec
            (old_slice,) = slices(cluster)
            notifications = plugin.registration.notifications

            await asyncio.to_thread(cluster.restart_kubelet)
            await until_async(
                lambda: plugin.registration.notifications > notifications and plugin.registration.registered is True,
                "the plugin registered with the new kubelet",
                timeout_s=90,
            )

            def republished() -> bool:
                now = slices(cluster)
                return len(now) == 1 and now[0]["metadata"]["uid"] != old_slice["metadata"]["uid"]

            await until_async(republished, "the node's slice wiped by the new kubelet and published again", 20)
            after = pod(cluster.admin, "dra-restart")
            assert after is not None and after["status"].get("phase") == "Running"
            (status,) = after["status"]["containerStatuses"]
            assert (status["containerID"], status["restartCount"]) == (container, 0)
            assert root.read_bytes(spec_path) == spec
            saved = json.loads(root.read_bytes(CHECKPOINT) or b"{}")
            assert uid in saved["claims"]

            await asyncio.to_thread(delete_pod, cluster, "dra-restart")
            await until_async(lambda: not root.exists(spec_path), "unprepared through the new kubelet", timeout_s=60)
    finally:
        await asyncio.to_thread(delete_pod, cluster, "dra-restart")
        _delete(cluster, f"{RESOURCE}/namespaces/default/resourceclaims/restart-gpu")
