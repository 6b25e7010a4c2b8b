"""Dynamic MIG with the real cdi subsystem beside the plugin (no stand-in for the node's CDI spec): the GPU
instance NodePrepareResources creates reaches the node's spec through the GPU-state owner's inventory refresh,
and the claim's spec carries that MIG device's own edits (its /dev/nvidia-caps node); after Unprepare the
node's spec no longer names it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from nodeagent.backends.hostfs import Root
from nodeagent.backends.sim import sandbox
from nodeagent.cdi.subsystem import CdiSubsystem
from nodeagent.settings import replace
from nodeagent.testing.apiserver import TestApiServer
from tests.dra.support import DRIVER, claim, mig_sim, running, settings, until
from tests.driver.fakes import real_usr_local_nvidia

SPEC = "/var/run/cdi/nvidia.yaml"
DEVICE = "gpu-0-mig-3g40gb-9-4"


def _names(root: Root) -> list[str]:
    doc = yaml.safe_load(root.read_bytes(SPEC) or b"{}") or {}
    return [str(d["name"]) for d in doc.get("devices") or []]


async def test_the_created_instance_reaches_the_node_spec_and_the_claims_spec_has_its_own_nodes(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    sim = await mig_sim(2)
    root = real_usr_local_nvidia(tmp_path)  # the driver as installed on an H100 node, its modules loaded
    sandbox.write_kernel_state(root, await sim.inventory())
    sandbox.write_device_placeholders(root, await sim.inventory())
    s = replace(settings(), "dra", dynamic_mig=True, claim_timeout_s=10.0)
    try:
        async with running(tmp_path, apiserver, sim=sim, s=s) as r:
            root.remove(SPEC)  # the stand-in's spec: the cdi subsystem writes its own
            cdi = CdiSubsystem(r.ctx)
            await cdi.start()
            task = asyncio.create_task(cdi.run(r.stop))
            try:
                await until(lambda: "gpu-0-mig-3g40gb-9-4" in {d.name for d in r.plugin.published}, "published")
                uid = claim(apiserver, "mig", [DEVICE])
                answer = (await r.kubelet.prepare(DRIVER, [(uid, "default", "mig")]))[uid]
                assert not answer.error, (answer.error, cdi.status().message)
                (mig,) = (await sim.inventory()).gpus[0].mig_devices
                assert mig.uuid in _names(root)  # the cdi subsystem followed the refreshed inventory
                spec = yaml.safe_load(root.read_bytes(f"/var/run/cdi/k8s.gpu.nvidia.com-claim_{uid}.yaml") or b"")
                (device,) = spec["devices"]
                nodes = [n["path"] for n in device["containerEdits"]["deviceNodes"]]
                assert any(p.startswith("/dev/nvidia-caps/nvidia-cap") for p in nodes), nodes
                gone = (await r.kubelet.unprepare(DRIVER, [(uid, "default", "mig")]))[uid]
                assert not gone.error
                await until(lambda: mig.uuid not in _names(root), "the destroyed instance gone from the node spec")
            finally:
                r.stop.set()
                await task
    finally:
        await sim.close()
