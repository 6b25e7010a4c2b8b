"""The DRA plugin's health stream on the real cluster (issue 22, KEP-4680): the real 1.34 kubelet (gate
ResourceHealthStatus, on the kubelet and the API server: ``cluster.FEATURE_GATES``) keeps its DRAResourceHealth
stream open on the plugin's dra.sock and writes what it says into the pod's
``status.containerStatuses[].allocatedResourcesStatus``: the pod's GPU shows Healthy, Unhealthy after an XID 79
on it (the simulator's fault injection), Healthy again once the XID window has passed.

The 1.34.4 kubelet (``UpdateAllocatedResourcesStatus``) matches a container's claim by comparing the pod's claim
entry name with the ResourceClaim's object name, so a claim made from a ResourceClaimTemplate (generated name
``<pod>-<entry>-<random>``) never gets an entry, whatever the plugin says; later releases resolve the generated
name. The pod here has both: a template claim (``gpu``: it runs, its device's health goes to the kubelet, and
the pod shows no entry for it) and a claim whose entry is named like the ResourceClaim (``health-gpu``: shown).

The plugin runs in this process on the cluster's root, as in ``test_dra.py`` (its ``plugin_on``).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from integration.cluster.api import create_all
from integration.cluster.cluster import PAUSE_IMAGE, Cluster
from integration.cluster.support import delete_pod, pod, until_async
from integration.cluster.test_dra import RESOURCE, plugin_on, running, settings
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.settings import replace

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.cluster]

POD = "dra-health"
TEMPLATE = "health-template"
NAMED = "health-gpu"
REQUEST = {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}}


def _pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": POD, "namespace": "default"},
        "spec": {
            "hostNetwork": True,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 5,
            "resourceClaims": [
                {"name": "gpu", "resourceClaimTemplateName": TEMPLATE},
                {"name": NAMED, "resourceClaimName": NAMED},
            ],
            "containers": [
                {
                    "name": "main",
                    "image": PAUSE_IMAGE,
                    "imagePullPolicy": "Never",
                    "resources": {"claims": [{"name": "gpu"}, {"name": NAMED}]},
                }
            ],
        },
    }


def _health(cluster: Cluster) -> dict[str, dict[str, str]]:
    """The container's ``allocatedResourcesStatus``: entry name → resourceID → health."""
    doc = pod(cluster.admin, POD)
    statuses = (doc or {}).get("status", {}).get("containerStatuses") or [{}]
    return {
        s["name"]: {r["resourceID"]: r["health"] for r in s.get("resources") or []}
        for s in statuses[0].get("allocatedResourcesStatus") or []
    }


def _device(cluster: Cluster, claim_name: str) -> tuple[str, str]:
    """(device, the kubelet's resourceID for it: the claim's first CDI ID) of a claim with one device."""
    claim = cluster.admin.get(f"{RESOURCE}/namespaces/default/resourceclaims/{claim_name}")
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    return result["device"], f"k8s.gpu.nvidia.com/claim={claim['metadata']['uid']}-{result['device']}"


async def test_an_xid_79_shows_the_pods_device_unhealthy_in_its_allocated_resources_status(
    cluster: Cluster, agent_token: str, tmp_path: Path
) -> None:
    s = replace(settings(), "gpuhealth", xid_window_s=30.0, min_publish_interval_s=0.0)
    template = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": TEMPLATE, "namespace": "default"},
        "spec": {"spec": REQUEST},
    }
    named = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": NAMED, "namespace": "default"},
        "spec": REQUEST,
    }
    create_all(cluster.admin, [template, named])
    sim = SimGpuBackend("h100-80gb-hbm3", 8, 0)
    try:
        async with plugin_on(cluster, agent_token, tmp_path, s=s, sim=sim) as plugin:
            await until_async(lambda: plugin.server.health.streams == 1, "the kubelet's health stream", 30)
            cluster.admin.post("/api/v1/namespaces/default/pods", _pod())
            await until_async(lambda: running(cluster, POD), "the pod with a claim template Running", 90)
            doc = pod(cluster.admin, POD)
            assert doc is not None
            (generated,) = doc["status"]["resourceClaimStatuses"]
            assert generated["name"] == "gpu"
            template_device, _ = _device(cluster, generated["resourceClaimName"])
            device, resource_id = _device(cluster, NAMED)
            entry = f"claim:{NAMED}"
            await until_async(
                lambda: _health(cluster) == {entry: {resource_id: "Healthy"}}, "the device Healthy in the pod", 60
            )

            gpus = {d.name: d.gpu_index for d in plugin.published}
            for name in (device, template_device):
                sim.inject_xid(gpus[name], 79)
            await until_async(
                lambda: _health(cluster) == {entry: {resource_id: "Unhealthy"}}, "the device Unhealthy", 30
            )
            assert running(cluster, POD)  # health is reported, the pod is left alone
            told = {d.device: d.health for d in plugin.server.health.devices}
            assert told[device] == told[template_device] == "Unhealthy"
            assert sorted(n for n, h in told.items() if h == "Healthy") == sorted(set(gpus) - {device, template_device})
            assert "79" in plugin.status().details["health"][device]

            await until_async(
                lambda: _health(cluster) == {entry: {resource_id: "Healthy"}}, "Healthy after the XID window", 90
            )
            await asyncio.to_thread(delete_pod, cluster, POD)  # unprepared by this plugin, not left to the next
            await until_async(lambda: not plugin.prepared, "both claims unprepared", 60)
    finally:
        await asyncio.to_thread(delete_pod, cluster, POD)
        for path in (f"resourceclaimtemplates/{TEMPLATE}", f"resourceclaims/{NAMED}"):
            with contextlib.suppress(Exception):
                cluster.admin.call("DELETE", f"{RESOURCE}/namespaces/default/{path}")
        await sim.close()
