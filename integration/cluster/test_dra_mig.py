"""Dynamic MIG on the real cluster (issue 22, KEP-4815 partitionable devices; Kubernetes 1.34 with the
``DRAPartitionableDevices`` gate): the real apiserver keeps the plugin's counter sets and the devices consuming
them, the real scheduler allocates a placement that fits beside an instance already in use, the real kubelet's
NodePrepareResources makes the plugin create that GPU instance in the simulator, and deleting the pod destroys
it again.

Four simulated H100s with MIG enabled (25 placement devices each, two slices); GPU 0 already has a 4g.40gb at
memory slice 0 (someone's, static), so a claim for a 3g.40gb on GPU 0 can only get the placement at slice 4.
The simulated GPU node (``integration.cluster.support.write_gpu_node``) follows the inventory as the driver and
the cdi subsystem would (``gpu_node_follows``: the new instance's capability files and device nodes' twins, the
node's CDI spec naming it); the cluster's containerd (2.x, CDI) injects the claim's devices, and the pod's probe
lists exactly the parent GPU's node and the new instance's two ``nvidia-cap`` nodes beside the control nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.cluster.api import create_all
from integration.cluster.cluster import Cluster
from integration.cluster.support import (
    PROBE_IMAGE,
    delete_pod,
    gpu_node_settings,
    import_probe,
    pod,
    refresh_gpu_node,
    until_async,
)
from integration.cluster.test_dra import (
    CHECKPOINT,
    CONTROL_NODES,
    RESOURCE,
    _delete,
    claim_pod,
    claim_spec_path,
    plugin_on,
    probed,
    running,
    settings,
    slices,
    template_claim,
)
from nodeagent.backends.chardevs import mig_cap_minor
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.settings import Settings, replace
from nodeagent.subsystem import Context
from tests.dra.support import following_inventory, mig_sim

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.cluster]

GPUS = 4


async def layout(sim: SimGpuBackend, gpu: int) -> list[tuple[str, int, str]]:
    inv = await sim.inventory()
    return sorted((m.profile, m.placement_start, m.uuid) for m in inv.gpus[gpu].mig_devices)


def gpu_node_follows(cluster: Cluster, ctx: Context, s: Settings) -> contextlib.AbstractAsyncContextManager[None]:
    """The simulated GPU node rewritten on every inventory change, as its driver and cdi subsystem keep it (the
    plugin writes a new instance's claim spec once the node's spec names it)."""
    return following_inventory(ctx, lambda inv: refresh_gpu_node(cluster, inv, s))


def _template(parent_uuid: str) -> dict[str, Any]:
    cel = (
        "device.attributes['gpu.nvidia.com'].profile == '3g.40gb' && "
        f"device.attributes['gpu.nvidia.com'].parentUUID == '{parent_uuid}'"
    )
    exactly = {"deviceClassName": "mig.nvidia.com", "selectors": [{"cel": {"expression": cel}}]}
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "one-3g40gb", "namespace": "default"},
        "spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}}},
    }


async def test_the_scheduler_allocates_a_partitionable_placement_prepare_creates_it_deleting_destroys_it(
    cluster: Cluster, agent_token: str, tmp_path: Path
) -> None:
    root = Root(cluster.base)
    sim = await mig_sim(GPUS, (0, "4g.40gb", 0))
    (static,) = await layout(sim, 0)
    s = replace(settings(), "dra", dynamic_mig=True, claim_timeout_s=20.0)
    import_probe(cluster)
    try:
        async with (
            plugin_on(cluster, agent_token, tmp_path, s=s, sim=sim) as plugin,
            gpu_node_follows(cluster, plugin.ctx, gpu_node_settings(cluster, s)),
        ):
            await until_async(lambda: len(slices(cluster)) == 2, "the node's two ResourceSlices")
            listed = slices(cluster)
            # kept by the real apiserver: every GPU's counter set, each in the slice of its consumers
            assert sum(len(sl["spec"].get("sharedCounters") or []) for sl in listed) == GPUS
            for sl in listed:
                own = {c["name"] for c in sl["spec"]["sharedCounters"]}
                used = {c["counterSet"] for d in sl["spec"]["devices"] for c in d.get("consumesCounters") or []}
                assert used == own
            names = {d["name"] for sl in listed for d in sl["spec"]["devices"]}
            assert plugin.inventory is not None
            gpu0 = plugin.inventory.gpus[0]
            want = f"gpu-{gpu0.minor_number}-mig-3g40gb-9-4"
            assert want in names and f"gpu-{gpu0.minor_number}-mig-3g40gb-9-0" not in names
            assert f"gpu-{gpu0.minor_number}-mig-4g40gb-5-0" in names  # the instance in use, static
            assert len(names) == 25 * (GPUS - 1) + 10 + 1  # GPU 0: 10 placements in slices 4-7, the 4g.40gb

            create_all(cluster.admin, [_template(gpu0.uuid)])
            cluster.admin.post(
                "/api/v1/namespaces/default/pods",
                claim_pod("dra-mig", {"resourceClaimTemplateName": "one-3g40gb"}, ("main",), image=PROBE_IMAGE),
            )
            await until_async(lambda: running(cluster, "dra-mig"), "the pod with a dynamic MIG claim Running", 120)
            doc = pod(cluster.admin, "dra-mig")
            assert doc is not None
            claim, result = template_claim(cluster, doc)
            uid = claim["metadata"]["uid"]
            assert (result["driver"], result["pool"], result["device"]) == ("gpu.nvidia.com", cluster.node_name, want)

            now = await layout(sim, 0)
            assert static in now and len(now) == 2
            ((profile, start, uuid),) = [i for i in now if i != static]
            assert (profile, start) == ("3g.40gb", 4)
            spec = yaml.safe_load(root.read_bytes(claim_spec_path(cluster, uid)) or b"")
            assert [d["name"] for d in spec["devices"]] == [f"{uid}-{want}"]
            (made,) = [m for m in (await sim.inventory()).gpus[0].mig_devices if m.uuid == uuid]
            gi, ci = made.gpu_instance_id, made.compute_instance_id
            minors = (mig_cap_minor(gpu0.minor_number, gi), mig_cap_minor(gpu0.minor_number, gi, ci))
            caps = {f"/dev/nvidia-caps/nvidia-cap{m}" for m in minors}
            # in the container: exactly the parent GPU's node and the new instance's caps, as the twins (1:3)
            devices = await probed(cluster, doc, "main")
            assert {p for p in devices if re.fullmatch(r"/dev/nvidia\d+", p)} == {f"/dev/nvidia{gpu0.minor_number}"}
            assert {p for p in devices if p.startswith("/dev/nvidia-caps/")} == caps, devices
            assert set(devices) >= CONTROL_NODES and set(devices.values()) == {"1:3"}, devices
            saved = json.loads(root.read_bytes(CHECKPOINT) or b"{}")
            (entry,) = saved["claims"][uid]["devices"]
            assert entry["migInstance"]["uuid"] == uuid and entry["migInstance"]["start"] == 4

            await asyncio.to_thread(delete_pod, cluster, "dra-mig")

            await until_async(
                lambda: plugin.mig.destroyed == 1, "the instance destroyed by NodeUnprepareResources", timeout_s=60
            )
            assert await layout(sim, 0) == [static] and plugin.mig.created == 1
    finally:
        await asyncio.to_thread(delete_pod, cluster, "dra-mig")
        _delete(cluster, f"{RESOURCE}/namespaces/default/resourceclaimtemplates/one-3g40gb")
        await sim.close()
