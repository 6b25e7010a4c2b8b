"""Dynamic MIG through the stand-in kubelet and the test API server: NodePrepareResources of a placement device
creates that GPU instance in the simulator (the per-claim CDI spec names it, the checkpoint records it), a
second prepare and an agent restart make no second one, Unprepare destroys exactly it, a taken placement is
refused by name. The node's CDI spec follows the inventory as the cdi subsystem does (``cdi_follows``)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.dra import checkpoint
from nodeagent.errors import ConfigError
from nodeagent.settings import Settings, replace
from nodeagent.testing.apiserver import TestApiServer
from tests.dra.support import DRIVER, Running, cdi_follows, claim, mig_sim, running, settings, until

CHECKPOINT = "/var/lib/kubelet/plugins/gpu.nvidia.com/checkpoint.json"
DEVICE = "gpu-0-mig-3g40gb-9-4"


def dynamic() -> Settings:
    return replace(settings(), "dra", dynamic_mig=True, claim_timeout_s=5.0)


async def layout(sim: SimGpuBackend, gpu: int) -> list[tuple[str, int, int, str]]:
    """(profile, start, GPU instance id, UUID) of the instances on ``gpu``."""
    inv = await sim.inventory()
    return sorted((m.profile, m.placement_start, m.gpu_instance_id, m.uuid) for m in inv.gpus[gpu].mig_devices)


def _spec(root: Root, uid: str) -> dict[str, Any] | None:
    data = root.read_bytes(f"/var/run/cdi/k8s.gpu.nvidia.com-claim_{uid}.yaml")
    return yaml.safe_load(data) if data is not None else None


def _saved(root: Root) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(root.read_bytes(CHECKPOINT) or b"{}")
    return doc


def _slice_devices(server: TestApiServer) -> list[str]:
    return [
        d["name"]
        for (plural, _, _), o in sorted(server.store.objects.items())
        if plural == "resourceslices"
        for d in o["spec"]["devices"]
    ]


@contextlib.asynccontextmanager
async def dynamic_plugin(tmp_path: Path, apiserver: TestApiServer, sim: SimGpuBackend) -> AsyncIterator[Running]:
    """The plugin with dynamic MIG on ``sim``, the node's CDI spec following, its placements published."""
    async with running(tmp_path, apiserver, sim=sim, s=dynamic()) as r, cdi_follows(r.ctx):
        await until(lambda: DEVICE in _slice_devices(apiserver), "the placement device in the slices")
        yield r


async def test_prepare_creates_the_allocated_placement_names_it_in_the_cdi_spec_and_unprepare_destroys_it(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    sim = await mig_sim()
    try:
        async with dynamic_plugin(tmp_path, apiserver, sim) as r:
            slices_before = sorted(_slice_devices(apiserver))
            uid = claim(apiserver, "mig", [DEVICE])
            answer = (await r.kubelet.prepare(DRIVER, [(uid, "default", "mig")]))[uid]
            assert not answer.error, answer.error
            [(profile, start, gi, uuid)] = await layout(sim, 0)
            assert (profile, start) == ("3g.40gb", 4)
            assert await layout(sim, 1) == []
            spec = _spec(r.ctx.root, uid)
            assert spec is not None
            assert [d["name"] for d in spec["devices"]] == [f"{uid}-{DEVICE}"]
            assert [d.device_name for d in answer.devices] == [DEVICE]
            (entry,) = _saved(r.ctx.root)["claims"][uid]["devices"]
            assert entry["uuid"] == uuid
            assert entry["migInstance"] == {
                "gpu": 0,
                "profile": "3g.40gb",
                "start": 4,
                "gpuInstanceID": gi,
                "uuid": uuid,
            }
            # the new instance stays the allocated placement device: no second, static device for it
            await until(
                lambda: r.plugin.inventory is not None and bool(r.plugin.inventory.gpus[0].mig_devices),
                "the new instance in the plugin's inventory",
            )
            await r.plugin.replan()
            assert sorted(d.name for d in r.plugin.published) == slices_before

            again = (await r.kubelet.prepare(DRIVER, [(uid, "default", "mig")]))[uid]
            assert not again.error and [d.cdi_device_ids for d in again.devices] == [
                d.cdi_device_ids for d in answer.devices
            ]
            assert await layout(sim, 0) == [(profile, start, gi, uuid)]  # idempotent: no second instance
            assert r.plugin.mig.created == 1

            gone = (await r.kubelet.unprepare(DRIVER, [(uid, "default", "mig")]))[uid]
            assert not gone.error, gone.error
            assert await layout(sim, 0) == []
            assert _spec(r.ctx.root, uid) is None
            assert uid not in _saved(r.ctx.root)["claims"]
            assert r.plugin.mig.destroyed == 1
    finally:
        await sim.close()


async def test_an_agent_restart_neither_loses_nor_duplicates_the_instance(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    sim = await mig_sim()
    try:
        uid = claim(apiserver, "mig", [DEVICE])
        async with dynamic_plugin(tmp_path, apiserver, sim) as r:
            first = (await r.kubelet.prepare(DRIVER, [(uid, "default", "mig")]))[uid]
            assert not first.error, first.error
        made = await layout(sim, 0)
        assert len(made) == 1
        (tmp_path / "var/run/cdi" / f"k8s.gpu.nvidia.com-claim_{uid}.yaml").unlink()  # a reboot empties /var/run
        async with dynamic_plugin(tmp_path, apiserver, sim) as r:
            await until(lambda: _spec(r.ctx.root, uid) is not None, "the claim's spec rebuilt from the checkpoint")
            assert r.plugin.mig.owned(r.plugin.prepared) == {0: {made[0][2]}}
            again = (await r.kubelet.prepare(DRIVER, [(uid, "default", "mig")]))[uid]
            assert not again.error and [d.cdi_device_ids for d in again.devices] == [
                d.cdi_device_ids for d in first.devices
            ]
            assert await layout(sim, 0) == made and r.plugin.mig.created == 0
            gone = (await r.kubelet.unprepare(DRIVER, [(uid, "default", "mig")]))[uid]
            assert not gone.error and await layout(sim, 0) == []
    finally:
        await sim.close()


async def test_a_crash_between_recording_and_creating_adopts_the_instance_on_the_retry(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    """The checkpoint says the instance was about to be made; the GPU has it (made just before the crash)."""
    sim = await mig_sim()
    try:
        uid = claim(apiserver, "mig", [DEVICE])
        made = await sim.create_gpu_instance(0, "3g.40gb", start=4)
        pending = {
            "format": "nodeagent.dra-checkpoint/v1",
            "claims": {
                uid: {
                    "namespace": "default",
                    "name": "mig",
                    "devices": [
                        {
                            "device": DEVICE,
                            "pool": "node-a",
                            "requests": ["gpu"],
                            "cdiDeviceIDs": [f"k8s.gpu.nvidia.com/claim={uid}-{DEVICE}"],
                            "uuid": "",
                            "migInstance": {"gpu": 0, "profile": "3g.40gb", "start": 4},
                        }
                    ],
                }
            },
        }
        Root(tmp_path).write_file(CHECKPOINT, json.dumps(pending).encode())
        async with dynamic_plugin(tmp_path, apiserver, sim) as r:
            answer = (await r.kubelet.prepare(DRIVER, [(uid, "default", "mig")]))[uid]
            assert not answer.error, answer.error
            assert [u for *_, u in await layout(sim, 0)] == [made.uuid] and r.plugin.mig.created == 0
            assert _saved(r.ctx.root)["claims"][uid]["devices"][0]["migInstance"]["uuid"] == made.uuid
    finally:
        await sim.close()


async def test_a_placement_taken_since_the_allocation_is_refused_by_name_and_nothing_is_disturbed(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    sim = await mig_sim()
    try:
        async with dynamic_plugin(tmp_path, apiserver, sim) as r:
            uid = claim(apiserver, "mig", [DEVICE])
            taken = await sim.create_gpu_instance(0, "4g.40gb", start=0)  # someone with nvidia-smi
            other = await sim.create_gpu_instance(0, "1g.10gb", start=4)
            answer = (await r.kubelet.prepare(DRIVER, [(uid, "default", "mig")]))[uid]
            assert "gpu-0-mig-3g40gb-9-4: placement taken on GPU 0" in answer.error
            assert "overlaps 1g.10gb at 4" in answer.error
            assert sorted(u for *_, u in await layout(sim, 0)) == sorted([taken.uuid, other.uuid])
            assert _spec(r.ctx.root, uid) is None
            assert uid not in _saved(r.ctx.root)["claims"]
            # and the slices follow: the placement is no longer offered
            await until(lambda: DEVICE not in _slice_devices(apiserver), "the taken placement gone from the slices")
    finally:
        await sim.close()


async def test_without_the_setting_mig_gpus_publish_only_their_instances(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    sim = await mig_sim()
    try:
        async with running(tmp_path, apiserver, sim=sim) as r:
            await r.plugin.replan()
            assert r.plugin.published == () and r.plugin.counter_sets == ()
    finally:
        await sim.close()


async def test_a_second_claim_on_a_placement_another_claim_holds_is_refused_and_the_first_keeps_it(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    sim = await mig_sim()
    try:
        async with dynamic_plugin(tmp_path, apiserver, sim) as r:
            first = claim(apiserver, "first", [DEVICE])
            assert not (await r.kubelet.prepare(DRIVER, [(first, "default", "first")]))[first].error
            held = await layout(sim, 0)
            second = claim(apiserver, "second", [DEVICE])
            answer = (await r.kubelet.prepare(DRIVER, [(second, "default", "second")]))[second]
            assert "placement taken on GPU 0: 3g.40gb at 4:4 overlaps 3g.40gb at 4:4" in answer.error
            assert await layout(sim, 0) == held and r.plugin.mig.created == 1
    finally:
        await sim.close()


def test_a_bad_mig_instance_in_the_checkpoint_names_the_file_and_key() -> None:
    doc = {
        "format": "nodeagent.dra-checkpoint/v1",
        "claims": {"u": {"namespace": "n", "name": "c", "devices": [{"device": "d", "pool": "p"}]}},
    }
    doc["claims"]["u"]["devices"][0]["migInstance"] = {"gpu": 0, "profile": "3g.40gb", "start": -1}
    with pytest.raises(ConfigError) as err:
        checkpoint.parse(json.dumps(doc).encode(), "/ck.json")
    assert "/ck.json" in str(err.value) and "claims.u.devices[0].migInstance.start" in str(err.value)
