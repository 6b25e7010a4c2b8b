"""``nvidia.com/mig.config`` on the Node drives MIG, end to end: the labels and mig subsystems on one event bus,
simulated GPUs, the server under test (the stand-in and the real kube-apiserver, tests/kube/servers.py). Each
state of ``nvidia.com/mig.config.state`` is read back from the Node's history (every stored version of the
Node: the stand-in's, or a watch of the real server's), so a state that was written and overwritten counts.
The operand Pods are added by the test (bound to the Node; no kubelet runs them) and deleted by it, as the
GPU Operator's DaemonSet controller would."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nodeagent import testing
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.compose import keep_sim_state
from nodeagent.kube.client import KubeClient
from nodeagent.kube.resources import NODES
from nodeagent.labels.node_status import MIG_CONDITION, MIG_CONFIG_LABEL, MIG_STATE_LABEL
from nodeagent.labels.subsystem import LabelsSubsystem
from nodeagent.mig.operands import PAUSED
from nodeagent.mig.subsystem import MigSubsystem
from nodeagent.model.mig import GpuProcess
from nodeagent.settings import Settings, replace
from tests.kube.servers import ServerUnderTest, kube_client
from tests.support import until

NODE = "node-a"


def agent_settings(**mig: Any) -> Settings:
    s = replace(Settings(), "agent", state_dir="/var/lib/nodeagent")
    s = replace(s, "labels", node_patch=True, start_jitter_s=0.0, retry_max_s=1.0)
    return replace(s, "mig", **mig)


@dataclass
class Agent:
    """The two subsystems of one agent process, running until ``stop``."""

    mig: MigSubsystem
    labels: LabelsSubsystem
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        await self.mig.start()  # applies a config persisted before a reboot before anything else
        await self.labels.start()
        self.tasks = [asyncio.create_task(self.mig.run(self.stop)), asyncio.create_task(self.labels.run(self.stop))]

    async def close(self) -> None:
        self.stop.set()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.labels.stop()
        await self.labels.ctx.node.close()


def agent(root: Path, sim: SimGpuBackend, server: ServerUnderTest, settings: Settings) -> Agent:
    keep_sim_state(sim, Root(root), settings)
    ctx = testing.context(Root(root), settings, gpus=sim, node_name=NODE)
    ctx.node.use(kube_client(server))
    mig = MigSubsystem(ctx)
    mig.operands.poll_s = 0.05
    return Agent(mig, LabelsSubsystem(ctx))


@pytest.fixture
async def admin(apiserver: ServerUnderTest) -> AsyncIterator[KubeClient]:
    client = kube_client(apiserver, "admin")
    yield client
    await client.close()


async def set_label(admin: KubeClient, key: str, value: str | None) -> None:
    """What ``kubectl label node node-a key=value --overwrite`` sends."""
    await admin.patch(NODES, NODE, {"metadata": {"labels": {key: value}}})


def label_history(server: ServerUnderTest, key: str) -> list[str]:
    """The label's value in each stored version of the Node, consecutive repeats folded."""
    values: list[str] = []
    for obj in server.node_history(NODE):
        value = obj["metadata"].get("labels", {}).get(key)
        if value is not None and (not values or values[-1] != value):
            values.append(value)
    return values


def node(server: ServerUnderTest) -> dict[str, Any]:
    found = server.object("nodes", NODE)
    assert found is not None
    return found


def condition(server: ServerUnderTest, cond_type: str) -> dict[str, Any]:
    conditions = node(server)["status"]["conditions"]
    return next(c for c in conditions if c["type"] == cond_type)


def events_about_node(server: ServerUnderTest) -> list[dict[str, Any]]:
    return server.events()


async def settled(server: ServerUnderTest, quiet_s: float = 0.3) -> None:
    """Wait until the agent wrote nothing for ``quiet_s`` (its reactions to a change are done)."""
    while True:
        before = server.agent_writes()
        await asyncio.sleep(quiet_s)
        if server.agent_writes() == before:
            return


def state_is(server: ServerUnderTest, state: str) -> Callable[[], bool]:
    """The state label and the condition (written right after it) both say ``state``."""

    def settled() -> bool:
        n = node(server)
        conditions = [c for c in n["status"].get("conditions", []) if c["type"] == MIG_CONDITION]
        return n["metadata"].get("labels", {}).get(MIG_STATE_LABEL) == state and any(
            f"': {state}" in c["message"] for c in conditions
        )

    return settled


async def test_label_reconfigures_the_gpus_to_success(
    tmp_path: Path, apiserver: ServerUnderTest, admin: KubeClient
) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    a = agent(tmp_path, sim, apiserver, agent_settings())
    await a.start()
    try:
        await set_label(admin, MIG_CONFIG_LABEL, "all-1g.10gb")
        await until(state_is(apiserver, "success"), "state success")
        assert label_history(apiserver, MIG_STATE_LABEL) == ["pending", "success"]
        inv = await sim.inventory()
        assert [len(g.mig_devices) for g in inv.gpus] == [7, 7]
        cond = condition(apiserver, MIG_CONDITION)
        assert (cond["status"], cond["reason"]) == ("True", "MigConfigApplied")
        assert cond["message"] == (
            f"MIG config 'all-1g.10gb': success: GPU 0 ({inv.gpus[0].uuid}), GPU 1 ({inv.gpus[1].uuid}) as configured"
        )
        await until(lambda: "MigConfigApplied" in [e["reason"] for e in events_about_node(apiserver)], "event")
        assert "MigConfigPending" in [e["reason"] for e in events_about_node(apiserver)]
        # The Events say which GPU (index and UUID), as the README promises.
        named = f"GPU 0 ({inv.gpus[0].uuid}), GPU 1 ({inv.gpus[1].uuid})"
        messages = {e["reason"]: e["message"] for e in events_about_node(apiserver)}
        assert messages["MigConfigPending"] == f"MIG config 'all-1g.10gb': pending: applying to {named}"
        assert messages["MigConfigApplied"] == f"MIG config 'all-1g.10gb': success: {named} as configured"
        # Converged (the GFD labels of the new layout published too): a resync writes nothing.
        await settled(apiserver)
        writes = apiserver.agent_writes()
        transition = condition(apiserver, MIG_CONDITION)["lastTransitionTime"]
        assert await a.labels.refresh()
        assert apiserver.agent_writes() == writes
        assert condition(apiserver, MIG_CONDITION)["lastTransitionTime"] == transition
        # A new config from the label: pending again, then success, GPUs changed.
        await set_label(admin, MIG_CONFIG_LABEL, "all-3g.40gb")
        await until(
            lambda: (
                label_history(apiserver, MIG_STATE_LABEL)[-1:] == ["success"]
                and len(label_history(apiserver, MIG_STATE_LABEL)) == 4
            ),
            "second success",
        )
        assert label_history(apiserver, MIG_STATE_LABEL) == ["pending", "success", "pending", "success"]
        assert [len(g.mig_devices) for g in (await sim.inventory()).gpus] == [2, 2]
    finally:
        await a.close()
        await sim.close()


async def test_unknown_config_fails_and_touches_nothing(
    tmp_path: Path, apiserver: ServerUnderTest, admin: KubeClient
) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0, mig_layout="3g.40gb*2")
    before = await sim.inventory()
    a = agent(tmp_path, sim, apiserver, agent_settings())
    await a.start()
    try:
        await set_label(admin, MIG_CONFIG_LABEL, "all-9g.1gb")
        await until(state_is(apiserver, "failed"), "state failed")
        assert label_history(apiserver, MIG_STATE_LABEL) == ["failed"]
        cond = condition(apiserver, MIG_CONDITION)
        assert (cond["status"], cond["reason"]) == ("False", "MigConfigFailed")
        assert "no config named 'all-9g.1gb'" in cond["message"]
        assert await sim.inventory() == before
        await until(lambda: any(e["type"] == "Warning" for e in events_about_node(apiserver)), "event")
        (warning,) = [e for e in events_about_node(apiserver) if e["type"] == "Warning"]
        assert warning["reason"] == "MigConfigFailed" and warning["involvedObject"]["name"] == NODE
    finally:
        await a.close()
        await sim.close()


async def test_a_failure_half_way_names_the_gpu(tmp_path: Path, apiserver: ServerUnderTest, admin: KubeClient) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0, mig_layout="7g.80gb")
    sim.set_holders(1, [GpuProcess(4242, "trainer", 1, 0)])
    a = agent(tmp_path, sim, apiserver, agent_settings())
    await a.start()
    try:
        await set_label(admin, MIG_CONFIG_LABEL, "all-1g.10gb")
        await until(state_is(apiserver, "failed"), "state failed")
        assert label_history(apiserver, MIG_STATE_LABEL) == ["pending", "failed"]
        message = condition(apiserver, MIG_CONDITION)["message"]
        uuid = (await sim.inventory()).gpu(1).uuid
        assert f"GPU 1 ({uuid}): in use by pid 4242 (trainer)" in message
        await until(lambda: any(e["reason"] == "MigConfigFailed" for e in events_about_node(apiserver)), "event")
        (warning,) = [e for e in events_about_node(apiserver) if e["reason"] == "MigConfigFailed"]
        assert warning["type"] == "Warning" and f"GPU 1 ({uuid}): in use by pid 4242" in warning["message"]
        inv = await sim.inventory()
        assert len(inv.gpu(0).mig_devices) == 7, "GPU 0 was changed before GPU 1 failed"
        assert [d.profile for d in inv.gpu(1).mig_devices] == ["7g.80gb"]
    finally:
        await a.close()
        await sim.close()


async def test_reboot_between_rebooting_and_success(
    tmp_path: Path, apiserver: ServerUnderTest, admin: KubeClient
) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    sim.block_reset("reboot")
    a = agent(tmp_path, sim, apiserver, agent_settings())
    await a.start()
    await set_label(admin, MIG_CONFIG_LABEL, "all-balanced")
    await until(state_is(apiserver, "rebooting"), "state rebooting")
    assert "after a reboot" in condition(apiserver, MIG_CONDITION)["message"]
    await a.close()
    await sim.close()

    # The node reboots: the same simulated node (its MIG state persists in the sandbox), a new agent.
    rebooted = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    keep_sim_state(rebooted, Root(tmp_path), agent_settings())
    rebooted.reboot()
    b = agent(tmp_path, rebooted, apiserver, agent_settings())
    await b.mig.start()
    assert b.mig.state == "success", "applied at start, before the agent reports ready"
    await b.labels.start()
    b.tasks = [asyncio.create_task(b.mig.run(b.stop)), asyncio.create_task(b.labels.run(b.stop))]
    try:
        await until(state_is(apiserver, "success"), "state success after the reboot")
        assert label_history(apiserver, MIG_STATE_LABEL) == ["pending", "rebooting", "success"]
        assert [len(g.mig_devices) for g in (await rebooted.inventory()).gpus] == [4, 4]
        assert condition(apiserver, MIG_CONDITION)["status"] == "True"
    finally:
        await b.close()
        await rebooted.close()


async def test_mode_unchanged_after_reboot_fails(tmp_path: Path, apiserver: ServerUnderTest, admin: KubeClient) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 1, 0)
    sim.block_reset("reboot")
    a = agent(tmp_path, sim, apiserver, agent_settings())
    await a.start()
    await set_label(admin, MIG_CONFIG_LABEL, "all-7g.80gb")
    await until(state_is(apiserver, "rebooting"), "state rebooting")
    await a.close()
    await sim.close()
    again = SimGpuBackend("h100-80gb-hbm3", 1, 0)  # the agent restarts, but the node did not reboot
    b = agent(tmp_path, again, apiserver, agent_settings())
    await b.start()
    try:
        await until(state_is(apiserver, "failed"), "state failed")
        assert label_history(apiserver, MIG_STATE_LABEL) == ["pending", "rebooting", "failed"]
        assert "did not take effect after rebooting" in condition(apiserver, MIG_CONDITION)["message"]
    finally:
        await b.close()
        await again.close()


OPERANDS = {
    "nvidia.com/gpu.deploy.device-plugin": "true",
    "nvidia.com/gpu.deploy.dcgm-exporter": "true",
    "nvidia.com/gpu.deploy.dcgm": "false",
}


async def _with_operands(apiserver: ServerUnderTest, admin: KubeClient) -> None:
    for key, value in OPERANDS.items():
        await set_label(admin, key, value)
    apiserver.add_pod(
        "nvidia-device-plugin-daemonset-x1", "gpu-operator", NODE, {"app": "nvidia-device-plugin-daemonset"}
    )
    apiserver.add_pod("nvidia-dcgm-exporter-x2", "gpu-operator", NODE, {"app": "nvidia-dcgm-exporter"})
    apiserver.add_pod("nvidia-dcgm-exporter-y2", "gpu-operator", "node-b", {"app": "nvidia-dcgm-exporter"})


async def test_operands_paused_then_restored_when_the_change_fails(
    tmp_path: Path, apiserver: ServerUnderTest, admin: KubeClient
) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0, mig_layout="7g.80gb")
    sim.set_holders(0, [GpuProcess(77, "python", 0, 0)])
    await _with_operands(apiserver, admin)
    a = agent(tmp_path, sim, apiserver, agent_settings(pause_operands=True, operand_wait_s=10.0))
    await a.start()

    async def daemonsets_react() -> None:
        """The DaemonSet controller: paused label → its pod on this node goes away."""
        await until(
            lambda: node(apiserver)["metadata"]["labels"]["nvidia.com/gpu.deploy.device-plugin"] == PAUSED, "paused"
        )
        apiserver.delete_object("pods", "nvidia-device-plugin-daemonset-x1", "gpu-operator")
        apiserver.delete_object("pods", "nvidia-dcgm-exporter-x2", "gpu-operator")

    reacting = asyncio.create_task(daemonsets_react())
    try:
        await set_label(admin, MIG_CONFIG_LABEL, "all-1g.10gb")
        await until(state_is(apiserver, "failed"), "state failed")
        await reacting
        assert label_history(apiserver, "nvidia.com/gpu.deploy.device-plugin") == ["true", PAUSED, "true"]
        assert label_history(apiserver, "nvidia.com/gpu.deploy.dcgm-exporter") == ["true", PAUSED, "true"]
        assert label_history(apiserver, "nvidia.com/gpu.deploy.dcgm") == ["false"], "false stays false"
        uuid = (await sim.inventory()).gpu(0).uuid
        assert f"GPU 0 ({uuid}): in use by pid 77 (python)" in condition(apiserver, MIG_CONDITION)["message"]
        labels = node(apiserver)["metadata"]["labels"]
        assert {k: labels[k] for k in OPERANDS} == OPERANDS
    finally:
        await a.close()
        await sim.close()


async def test_operand_pods_that_stay_fail_the_change_and_are_named(
    tmp_path: Path, apiserver: ServerUnderTest, admin: KubeClient
) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    before = await sim.inventory()
    await _with_operands(apiserver, admin)
    a = agent(tmp_path, sim, apiserver, agent_settings(pause_operands=True, operand_wait_s=0.3))
    await a.start()
    try:
        await set_label(admin, MIG_CONFIG_LABEL, "all-1g.10gb")
        await until(state_is(apiserver, "failed"), "state failed")
        message = condition(apiserver, MIG_CONDITION)["message"]
        assert "gpu-operator/nvidia-device-plugin-daemonset-x1" in message
        assert "gpu-operator/nvidia-dcgm-exporter-x2" in message and "y2" not in message
        assert await sim.inventory() == before, "nothing changed while the operands held the GPUs"
        labels = node(apiserver)["metadata"]["labels"]
        assert {k: labels[k] for k in OPERANDS} == OPERANDS
    finally:
        await a.close()
        await sim.close()


async def test_a_pod_holding_the_gpu_is_named_in_the_condition(
    tmp_path: Path, apiserver: ServerUnderTest, admin: KubeClient
) -> None:
    """A container process with /dev/nvidia0 open (seen in the node's /proc) blocks the change; its pod is
    named in the condition."""
    sim = SimGpuBackend("h100-80gb-hbm3", 1, 0, mig_layout="7g.80gb")
    minor = (await sim.inventory()).gpu(0).minor_number
    uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    proc = tmp_path / "proc" / "4321"
    (proc / "fd").mkdir(parents=True)
    (proc / "fd" / "5").symlink_to(f"/dev/nvidia{minor}")
    (proc / "comm").write_text("python\n")
    (proc / "cgroup").write_text(f"0::/kubepods.slice/kubepods-pod{uid.replace('-', '_')}.slice/cri-containerd-1\n")
    a = agent(tmp_path, sim, apiserver, agent_settings())
    await a.start()
    try:
        await set_label(admin, MIG_CONFIG_LABEL, "all-1g.10gb")
        await until(state_is(apiserver, "failed"), "state failed")
        message = condition(apiserver, MIG_CONDITION)["message"]
        assert f"pod uid {uid}" in message and "4321" in message, message
        assert [d.profile for d in (await sim.inventory()).gpu(0).mig_devices] == ["7g.80gb"]
    finally:
        await a.close()
        await sim.close()


async def test_operands_paused_when_mig_starts_before_labels(
    tmp_path: Path, apiserver: ServerUnderTest, admin: KubeClient
) -> None:
    """At agent start mig applies ``mig.config`` and pauses the operands itself, through the Node gateway, while
    labels has not started yet: nothing waits for another subsystem."""
    sim = SimGpuBackend("h100-80gb-hbm3", 1, 0)
    for key, value in OPERANDS.items():
        await set_label(admin, key, value)
    a = agent(tmp_path, sim, apiserver, agent_settings(config="all-3g.40gb", pause_operands=True, operand_wait_s=5.0))
    try:
        await a.mig.start()
        assert a.mig.state == "success", a.mig.reason
        assert label_history(apiserver, "nvidia.com/gpu.deploy.device-plugin") == ["true", PAUSED, "true"]
    finally:
        await a.close()
        await sim.close()


async def test_revert_takes_back_the_state_label_and_condition_not_the_request(
    tmp_path: Path, apiserver: ServerUnderTest, admin: KubeClient
) -> None:
    """Found on the real cluster (integration/cluster/test_daemonset.py): revert left
    ``nvidia.com/mig.config.state`` on the Node. It is the agent's; ``nvidia.com/mig.config`` is the user's."""
    sim = SimGpuBackend("h100-80gb-hbm3", 1, 0)
    a = agent(tmp_path, sim, apiserver, agent_settings())
    await a.start()
    try:
        await set_label(admin, MIG_CONFIG_LABEL, "all-1g.10gb")
        await until(state_is(apiserver, "success"), "state success")
    finally:
        await a.close()
    result = await a.labels.revert()
    labels = node(apiserver)["metadata"]["labels"]
    assert MIG_STATE_LABEL not in labels, result
    assert labels[MIG_CONFIG_LABEL] == "all-1g.10gb"
    assert MIG_CONDITION not in [c["type"] for c in node(apiserver)["status"].get("conditions", [])]
    assert f"Node/{NODE} {MIG_STATE_LABEL}" in result.changed


async def test_each_state_reaches_the_node_in_order_even_when_published_back_to_back(
    tmp_path: Path, apiserver: ServerUnderTest
) -> None:
    """Found on the real server (its writes take longer than the stand-in's): mig published ``pending`` and
    ``rebooting`` before labels had written ``pending``, and labels wrote only the latest, so ``pending`` never
    reached the Node. Each published state is written, in order."""
    from nodeagent import events
    from nodeagent.model.mig import MigReadiness

    apiserver.merge_patch("nodes", NODE, {"metadata": {"labels": {MIG_CONFIG_LABEL: "all-1g.10gb"}}})
    sim = SimGpuBackend("h100-80gb-hbm3", 1, 0)
    a = agent(tmp_path, sim, apiserver, agent_settings())
    await a.labels.start()  # labels alone: the test publishes mig's states itself
    a.tasks = [asyncio.create_task(a.labels.run(a.stop))]
    try:
        await until(lambda: apiserver.open_agent_watches("nodes") > 0, "labels running (the Node watched)")
        bus = a.labels.ctx.bus
        bus.publish(events.MIG_READY, MigReadiness("all-1g.10gb", "pending", "applying"))
        bus.publish(events.MIG_READY, MigReadiness("all-1g.10gb", "rebooting", "after a reboot"))
        await until(lambda: label_history(apiserver, MIG_STATE_LABEL)[-1:] == ["rebooting"], "rebooting written")
        assert label_history(apiserver, MIG_STATE_LABEL) == ["pending", "rebooting"]
    finally:
        await a.close()
        await sim.close()
