"""The DRA plugin on a stand-in kubelet that enforces the protocol (registration handshake, every claim answered)
and the test API server (the project's RBAC): ResourceSlices, NodePrepareResources / NodeUnprepareResources,
the per-claim CDI spec and the checkpoint, an agent restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from nodeagent import events
from nodeagent.backends.dra_server import ClaimRef, DraPluginServer, PrepareResult
from nodeagent.backends.hostfs import Root
from nodeagent.dra.subsystem import DraSubsystem
from nodeagent.errors import ConfigError
from nodeagent.settings import Settings, replace
from nodeagent.subsystem import Phase
from nodeagent.testing.apiserver import TestApiServer
from nodeagent.testing.kubelet_dra import KubeletDra, ProtocolViolation
from tests.deviceplugin.support import inventory
from tests.deviceplugin.support import running as dp_running
from tests.dra.support import DRIVER, REG_SOCKET, claim, running, until

ENDPOINT = "/var/lib/kubelet/plugins/gpu.nvidia.com/dra.sock"
CHECKPOINT = "/var/lib/kubelet/plugins/gpu.nvidia.com/checkpoint.json"


def _slices(server: TestApiServer) -> list[dict[str, Any]]:
    return [o for (plural, _, _), o in sorted(server.store.objects.items()) if plural == "resourceslices"]


def _spec(root: Root, uid: str) -> dict[str, Any] | None:
    data = root.read_bytes(f"/var/run/cdi/k8s.gpu.nvidia.com-claim_{uid}.yaml")
    return yaml.safe_load(data) if data is not None else None


async def test_registers_as_dra_plugin_v1_with_the_endpoint_under_the_kubelet_root(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    async with running(tmp_path, apiserver) as r:
        assert r.kubelet.plugins[DRIVER].service == "v1.DRAPlugin"
        assert r.kubelet.plugins[DRIVER].endpoint == ENDPOINT
        await until(lambda: r.plugin.registration.registered is True, "the kubelet's registration status")
        await until(lambda: r.plugin.status().phase == Phase.RUNNING, "running")


async def test_a_kubelet_without_v1_uses_v1beta1(tmp_path: Path, apiserver: TestApiServer) -> None:
    async with running(tmp_path, apiserver, register=False) as r:
        kubelet = KubeletDra(r.ctx.root, known=("v1beta1.DRAPlugin",))
        await until(lambda: REG_SOCKET in kubelet.sockets(), "the registration socket")
        assert (await kubelet.register(REG_SOCKET)).service == "v1beta1.DRAPlugin"  # type: ignore[union-attr]
        uid = claim(apiserver, "c1", ["gpu-0"])
        answer = (await kubelet.prepare(DRIVER, [(uid, "default", "c1")]))[uid]
        assert not answer.error and [d.device_name for d in answer.devices] == ["gpu-0"]


async def test_publishes_one_slice_with_nvidias_names_and_attributes_written_only_on_change(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    async with running(tmp_path, apiserver) as r:
        await until(lambda: len(_slices(apiserver)) == 1, "the ResourceSlice")
        inv = await r.ctx.gpu_state.current()
        (sl,) = _slices(apiserver)
        assert sl["metadata"]["name"] == "node-a-gpu.nvidia.com-0"
        assert sl["spec"]["driver"] == DRIVER and sl["spec"]["nodeName"] == "node-a"
        assert sl["spec"]["pool"] == {"name": "node-a", "generation": 0, "resourceSliceCount": 1}
        gpu0 = sl["spec"]["devices"][0]
        assert [d["name"] for d in sl["spec"]["devices"]] == ["gpu-0", "gpu-1"]
        attrs = gpu0["attributes"]
        assert attrs["type"] == {"string": "gpu"}
        assert attrs["uuid"] == {"string": inv.gpus[0].uuid}
        assert attrs["productName"] == {"string": "NVIDIA H100 80GB HBM3"}
        assert attrs["architecture"] == {"string": "Hopper"}
        assert attrs["cudaComputeCapability"] == {"version": "9.0.0"}
        assert attrs["driverVersion"]["version"].count(".") == 2
        assert attrs["cudaDriverVersion"]["version"].endswith(".0")
        assert attrs["resource.kubernetes.io/pciBusID"]["string"].count(":") == 2
        assert gpu0["capacity"]["memory"] == {"value": str(inv.gpus[0].memory_total_mib * 1024 * 1024)}
        version = sl["metadata"]["resourceVersion"]
        writes = r.plugin.slice_writes
        await r.plugin.publish()  # nothing changed: nothing written
        assert r.plugin.slice_writes == writes
        assert _slices(apiserver)[0]["metadata"]["resourceVersion"] == version


async def test_prepare_writes_a_spec_naming_exactly_the_claims_device_and_is_idempotent(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    async with running(tmp_path, apiserver) as r:
        inv = await r.ctx.gpu_state.current()
        uid = claim(apiserver, "train", ["gpu-1"])
        answer = (await r.kubelet.prepare(DRIVER, [(uid, "default", "train")]))[uid]
        assert answer.error == ""
        (device,) = answer.devices
        assert (device.pool_name, device.device_name, list(device.request_names)) == ("node-a", "gpu-1", ["gpu"])
        assert list(device.cdi_device_ids) == [f"k8s.gpu.nvidia.com/claim={uid}-gpu-1"]
        spec = _spec(r.ctx.root, uid)
        assert spec is not None and spec["kind"] == "k8s.gpu.nvidia.com/claim"
        assert [d["name"] for d in spec["devices"]] == [f"{uid}-gpu-1"]
        node_spec = yaml.safe_load(r.ctx.root.read_bytes("/var/run/cdi/nvidia.yaml") or b"")
        edits = next(d["containerEdits"] for d in node_spec["devices"] if d["name"] == inv.gpus[1].uuid)
        assert spec["devices"][0]["containerEdits"] == edits
        saved = r.ctx.root.read_bytes(CHECKPOINT)
        assert saved is not None and uid.encode() in saved
        again = (await r.kubelet.prepare(DRIVER, [(uid, "default", "train")]))[uid]
        assert again == answer
        assert r.ctx.root.read_bytes(CHECKPOINT) == saved


async def test_every_claim_in_a_request_is_answered_each_with_its_own_error(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    async with running(tmp_path, apiserver) as r:
        good = claim(apiserver, "good", ["gpu-0"])
        pending = claim(apiserver, "pending", [], allocated=False)
        other = claim(apiserver, "elsewhere", ["gpu-0"], pool="node-b")
        unknown = claim(apiserver, "unknown", ["gpu-7"])
        answers = await r.kubelet.prepare(
            DRIVER,
            [
                (good, "default", "good"),
                (pending, "default", "pending"),
                (other, "default", "elsewhere"),
                (unknown, "default", "unknown"),
                ("uid-gone", "default", "gone"),
            ],
        )
        assert answers[good].error == ""
        assert answers[pending].error == "default/pending: ResourceClaim default/pending is not allocated"
        assert "no device of driver gpu.nvidia.com in pool node-a" in answers[other].error
        assert "device gpu-7 of pool node-a is not published by this node" in answers[unknown].error
        assert answers["uid-gone"].error == "default/gone: ResourceClaim default/gone not found"
        assert _spec(r.ctx.root, pending) is None


async def test_unprepare_removes_the_spec_and_the_record_and_is_idempotent(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    async with running(tmp_path, apiserver) as r:
        uid = claim(apiserver, "c", ["gpu-0", "gpu-1"])
        assert (await r.kubelet.prepare(DRIVER, [(uid, "default", "c")]))[uid].error == ""
        assert len(_spec(r.ctx.root, uid)["devices"]) == 2  # type: ignore[index]
        answers = await r.kubelet.unprepare(DRIVER, [(uid, "default", "c"), ("uid-never", "default", "never")])
        assert {u: a.error for u, a in answers.items()} == {uid: "", "uid-never": ""}
        assert _spec(r.ctx.root, uid) is None
        assert uid.encode() not in (r.ctx.root.read_bytes(CHECKPOINT) or b"")
        assert (await r.kubelet.unprepare(DRIVER, [(uid, "default", "c")]))[uid].error == ""


async def test_an_agent_restart_rebuilds_the_specs_of_prepared_claims(tmp_path: Path, apiserver: TestApiServer) -> None:
    async with running(tmp_path, apiserver) as r:
        uid = claim(apiserver, "c", ["gpu-0"])
        first = (await r.kubelet.prepare(DRIVER, [(uid, "default", "c")]))[uid]
        before = _spec(r.ctx.root, uid)
    root = Root(tmp_path)
    root.remove(f"/var/run/cdi/k8s.gpu.nvidia.com-claim_{uid}.yaml")  # /var/run is gone after a reboot
    apiserver.store.objects.pop(("resourceclaims", "default", "c"))  # the answer comes from the checkpoint
    async with running(tmp_path, apiserver) as r:
        assert _spec(r.ctx.root, uid) == before
        assert (await r.kubelet.prepare(DRIVER, [(uid, "default", "c")]))[uid] == first


async def test_a_bad_checkpoint_is_refused_naming_the_file_and_key(tmp_path: Path, apiserver: TestApiServer) -> None:
    root = Root(tmp_path)
    root.write_file(CHECKPOINT, b'{"format": "nodeagent.dra-checkpoint/v1", "claims": {"u": {"devices": [1]}}}')
    from nodeagent import testing

    ctx = testing.context(root, inventory=None)
    with pytest.raises(ConfigError) as err:
        await DraSubsystem(ctx).start()
    assert str(err.value).startswith(f"{CHECKPOINT}: claims.u.devices[0]: must be a mapping")


class _Forgetful:
    """A plugin logic that answers no claim: the server still answers each one, with an error."""

    async def prepare(self, claims: tuple[ClaimRef, ...]) -> dict[str, PrepareResult]:
        return {}

    async def unprepare(self, claims: tuple[ClaimRef, ...]) -> dict[str, str]:
        return {}


class _Dropping(DraPluginServer):
    """A server that leaves claims out of its response, as the kubelet would see a broken plugin."""

    async def prepare(self, pb: Any, request: Any) -> Any:
        return pb.NodePrepareResourcesResponse(claims={})


async def _served(server: DraPluginServer, root: Root) -> KubeletDra:
    await server.serve()
    kubelet = KubeletDra(root)
    from nodeagent.testing.kubelet_dra import Registered

    kubelet.plugins[DRIVER] = Registered(DRIVER, ENDPOINT, "v1.DRAPlugin")
    return kubelet


async def test_no_claim_is_dropped_and_the_stand_in_fails_a_plugin_that_drops_one(tmp_path: Path) -> None:
    root = Root(tmp_path)
    root.resolve("/var/lib/kubelet/plugins/gpu.nvidia.com").mkdir(parents=True)
    server = DraPluginServer(root, "/var/lib/kubelet/plugins/gpu.nvidia.com", _Forgetful())
    kubelet = await _served(server, root)
    try:
        answers = await kubelet.prepare(DRIVER, [("u1", "ns", "a"), ("u2", "ns", "b")])
        assert answers["u2"].error == "claim ns/b was not answered"
        assert (await kubelet.unprepare(DRIVER, [("u1", "ns", "a")]))["u1"].error == "claim ns/a was not answered"
    finally:
        await server.stop()
    dropping = _Dropping(root, "/var/lib/kubelet/plugins/gpu.nvidia.com", _Forgetful())
    kubelet = await _served(dropping, root)
    try:
        with pytest.raises(ProtocolViolation, match="left out: \\['u1'\\]"):
            await kubelet.prepare(DRIVER, [("u1", "ns", "a")])
    finally:
        await dropping.stop()


async def test_a_refused_registration_is_in_the_status_with_the_kubelets_reason(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    async with running(tmp_path, apiserver, register=False) as r:
        kubelet = KubeletDra(r.ctx.root, known=("v2.DRAPlugin",))
        await until(lambda: REG_SOCKET in kubelet.sockets(), "the registration socket")
        assert await kubelet.register(REG_SOCKET) is None
        assert kubelet.refusals == [
            "none of services supported by the plugin (['v1.DRAPlugin', 'v1beta1.DRAPlugin']) are supported"
        ]
        await until(lambda: r.plugin.status().phase == Phase.DEGRADED, "degraded")
        assert r.plugin.registration.registered is False
        assert "the kubelet refused the registration: none of services" in r.plugin.status().reason


async def test_a_mig_change_republishes_the_mig_devices_with_the_generation_bumped(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    async with running(tmp_path, apiserver) as r:
        await until(lambda: len(_slices(apiserver)) == 1, "the ResourceSlice")
        mig = await inventory(2, mig_layout="1g.10gb*7")
        r.ctx.bus.publish(events.MIG_CHANGED, mig)

        def names() -> list[str]:
            return [d["name"] for s in _slices(apiserver) for d in s["spec"]["devices"]]

        await until(lambda: len(names()) == 14, "14 MIG devices published")
        (sl,) = _slices(apiserver)
        assert sl["spec"]["pool"]["generation"] == 1
        assert names()[:2] == ["gpu-0-mig-1g10gb-19-0", "gpu-0-mig-1g10gb-19-1"]
        assert {d["attributes"]["type"]["string"] for d in sl["spec"]["devices"]} == {"mig"}


async def test_without_a_kubelet_it_waits_and_registers_when_the_registry_appears(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    async with running(tmp_path, apiserver, register=False) as r:
        registry = r.ctx.root.resolve("/var/lib/kubelet/plugins_registry")
        registry.rmdir()
        await until(lambda: "waiting for the kubelet" in r.plugin.status().reason, "waiting for the kubelet")
        assert r.plugin.status().phase == Phase.RUNNING
        registry.mkdir()  # noticed by the watch, not the 10 s recheck
        await until(lambda: REG_SOCKET in r.kubelet.sockets(), "the registration socket")
        assert await r.kubelet.register(REG_SOCKET) is not None


async def test_with_dra_gpus_dra_publishes_those_and_the_device_plugin_the_others(
    tmp_path: Path, apiserver: TestApiServer
) -> None:
    split = replace(replace(Settings(), "dra", enabled=True, gpus=["1"]), "gpuhealth", xid_window_s=1.0)
    async with running(tmp_path, apiserver, s=split) as r:
        await until(lambda: len(_slices(apiserver)) == 1, "the ResourceSlice")
        assert [d["name"] for d in _slices(apiserver)[0]["spec"]["devices"]] == ["gpu-1"]
        inv = await r.ctx.gpu_state.current()
        async with dp_running(tmp_path / "dp", split, inv=inv) as dp:
            await dp.kubelet.wait_for(lambda: dp.kubelet.allocatable("nvidia.com/gpu") == 1)
            assert [d[0] for d in dp.kubelet.plugins["nvidia.com/gpu"].devices] == [inv.gpus[0].uuid]
