"""The ``mig`` subsystem on simulated GPUs: states, events, metrics, the reboot path, pausing sampling."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from nodeagent import events, testing
from nodeagent import settings as S
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.backends.podresources import ContainerDevices
from nodeagent.cli import main
from nodeagent.mig.subsystem import MigSubsystem
from nodeagent.model.mig import GpuProcess, MigConfigRequest, MigReadiness
from nodeagent.subsystem import Phase


class Pauses:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    async def pause(self, indexes: Sequence[int]) -> None:
        self.calls.append(("pause", tuple(indexes)))

    async def resume(self, indexes: Sequence[int]) -> None:
        self.calls.append(("resume", tuple(indexes)))


def make(root: Path, sim: SimGpuBackend, config: str = "all-balanced", **mig: str) -> tuple[MigSubsystem, Pauses]:
    settings = S.replace(S.Settings(), "mig", config=config, **mig)
    settings = S.replace(settings, "agent", state_dir="/var/lib/nodeagent")
    ctx = testing.context(Root(root), settings, gpus=sim, node_name="n")
    pauses = Pauses()
    return MigSubsystem(ctx, sampling=pauses), pauses


def metric(sub: MigSubsystem, state: str) -> float:
    text = generate_latest(sub.ctx.registry).decode()
    for line in text.splitlines():
        if line.startswith("nodeagent_mig_config_state{") and f'state="{state}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no series for {state}: {text}")


async def test_applies_the_generated_config_and_publishes(tmp_path: Path) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 4, 0)
    sub, pauses = make(tmp_path, sim)
    changed = sub.ctx.bus.subscribe(events.MIG_CHANGED)
    await sub.start()
    assert sub.status().phase == Phase.RUNNING
    assert (sub.state, sub.status().details["state"]) == ("success", "success")
    assert metric(sub, "success") == 1.0 and metric(sub, "pending") == 0.0
    inventory = (await changed.get()).payload
    assert all(len(g.mig_devices) == 4 for g in inventory.gpus)
    named = ", ".join(f"GPU {g.index} ({g.uuid})" for g in inventory.gpus)
    assert sub.ctx.bus.last(events.MIG_READY) == MigReadiness("all-balanced", "success", f"{named} as configured")
    assert pauses.calls == [("pause", (0, 1, 2, 3)), ("resume", (0, 1, 2, 3))]
    # Nothing to do the second time: no call, no pause.
    await sub.reconcile()
    assert len(pauses.calls) == 2 and sub.state == "success"
    await sim.close()


async def test_plan_says_what_stays(tmp_path: Path) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0, mig_layout="3g.40gb,3g.40gb")
    sub, _ = make(tmp_path, sim, config="all-balanced")
    plan = sub.plan(await sub.observe())
    assert not plan.error
    assert "GPU 0: keeps 3g.40gb at 4 (GI 2 " in "\n".join(plan.evidence)
    assert [s.action for s in plan.steps[:2]] == ["mig-destroy", "mig-create"]
    assert plan.disruption == "restart"
    await sim.close()


async def test_bad_config_fails_with_the_reason(tmp_path: Path) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    sub, _ = make(tmp_path, sim, config="all-1g.5gb")
    await sub.start()
    assert sub.state == "failed" and "no config named 'all-1g.5gb'" in sub.reason
    assert sub.status().phase == Phase.FAILED
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: v1\nmig-configs:\n  c:\n    - devices: all\n"
        '      mig-enabled: true\n      mig-devices: {"9g.1gb": 1}\n'
    )
    sub, _ = make(tmp_path, sim, config="c", config_file=str(bad))
    await sub.start()
    assert sub.state == "failed" and f"{bad}: mig-configs.c[0].mig-devices.9g.1gb" in sub.reason
    await sim.close()


async def test_holders_make_it_fail_naming_them(tmp_path: Path) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0, mig_layout="7g.80gb")
    sim.set_holders(1, [GpuProcess(321, "vllm", 1, 0)])
    sub, _ = make(tmp_path, sim, config="all-1g.10gb")
    await sub.start()
    assert sub.state == "failed"
    assert f"GPU 1 ({(await sim.inventory()).gpu(1).uuid}): in use by pid 321 (vllm) on GI 0 [nvml]" in sub.reason
    assert metric(sub, "failed") == 1.0
    inv = await sim.inventory()
    assert len(inv.gpu(0).mig_devices) == 7 and [d.profile for d in inv.gpu(1).mig_devices] == ["7g.80gb"]
    await sim.close()


async def test_reboot_required_then_applied_at_next_start(tmp_path: Path) -> None:
    state = tmp_path / "var/lib/nodeagent/sim-mig-state.json"
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    sub, _ = make(tmp_path, sim, config="all-7g.80gb")
    sim.block_reset("reboot")
    await sub.start()
    assert sub.state == "rebooting" and "after a reboot" in sub.reason
    assert sub.status().phase == Phase.DEGRADED
    desired = tmp_path / "var/lib/nodeagent/mig-desired.json"
    assert '"config": "all-7g.80gb"' in desired.read_text()
    await sim.close()

    # The node reboots; the agent starts without mig.config in its settings and finds the desired config.
    rebooted = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    rebooted.use_state_file(state)
    rebooted.reboot()
    sub, _ = make(tmp_path, rebooted, config="")
    await sub.start()
    assert sub.state == "success", sub.reason
    assert not desired.exists()
    assert [d.profile for d in (await rebooted.inventory()).gpu(1).mig_devices] == ["7g.80gb"]
    await rebooted.close()


async def test_mode_that_did_not_change_after_reboot_fails(tmp_path: Path) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 1, 0)
    sub, _ = make(tmp_path, sim, config="all-7g.80gb")
    sim.block_reset("reboot")
    await sub.start()
    await sim.close()
    again = SimGpuBackend("h100-80gb-hbm3", 1, 0)  # same state file (attached by the subsystem); no reboot
    sub, _ = make(tmp_path, again, config="all-7g.80gb")
    await sub.start()
    assert sub.state == "failed" and "did not take effect after rebooting" in sub.reason
    await again.close()


def test_plan_and_apply_commands_include_mig(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NODEAGENT_MIG__CONFIG", "all-balanced")
    root = str(tmp_path / "node")
    assert main(["plan", "--simulate", "h100-80gb-hbm3:2", "--root", root, "--only", "mig"]) == 0
    out = capsys.readouterr().out
    assert "create 3g.40gb at 4:4" in out
    assert main(["apply", "--simulate", "h100-80gb-hbm3:2", "--root", root, "--only", "mig"]) == 0
    assert "mig: changed GPU 0, GPU 1" in capsys.readouterr().out
    assert main(["apply", "--simulate", "h100-80gb-hbm3:2", "--root", root, "--only", "mig"]) == 0
    assert "mig: already in the desired state" in capsys.readouterr().out


async def test_cdi_follows_a_mig_change(tmp_path: Path) -> None:
    """The CDI subsystem (running) regenerates its spec from the MIG_CHANGED the mig subsystem publishes."""
    import asyncio
    import contextlib

    from nodeagent.backends.sim.sandbox import populate_sandbox
    from nodeagent.cdi.subsystem import CdiSubsystem

    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    populate_sandbox(Root(tmp_path), await sim.inventory())
    mig, _ = make(tmp_path, sim, config="all-3g.40gb")
    cdi = CdiSubsystem(mig.ctx)
    await cdi.start()
    assert cdi.spec is not None and not any(":" in d["name"] for d in cdi.spec["devices"])
    stop = asyncio.Event()
    task = asyncio.create_task(cdi.run(stop))
    await asyncio.sleep(0)
    await mig.start()
    assert mig.state == "success"
    for _ in range(200):
        if cdi.spec is not None and any(d["name"] == "1:1" for d in cdi.spec["devices"]):
            break
        await asyncio.sleep(0.01)
    names = {d["name"] for d in cdi.spec["devices"]}
    assert {"0:0", "0:1", "1:0", "1:1"} <= names
    uuids = {d.uuid for g in (await sim.inventory()).gpus for d in g.mig_devices}
    assert uuids <= names
    stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await sim.close()


async def test_a_failure_midway_leaves_the_other_gpus_done(tmp_path: Path) -> None:
    """A lost GPU and a hung one fail with a reason; the others are changed; no traceback."""
    sim = SimGpuBackend("h100-80gb-hbm3", 4, 0)
    sim.lose_gpu(1)
    sub, _ = make(tmp_path, sim, config="all-3g.40gb")
    sim_timeout = SimGpuBackend("h100-80gb-hbm3", 4, 0, call_timeout_s=0.2)
    await sub.start()
    assert sub.state == "failed"
    assert sub.reason.startswith(f"GPU 1 ({(await sim.inventory()).gpu(1).uuid}): ") and "GPU is lost" in sub.reason
    inv = await sim.inventory()
    assert [len(inv.gpu(i).mig_devices) for i in (0, 2, 3)] == [2, 2, 2]
    await sim.close()
    sim_timeout.hang_calls(2, 5.0)
    sub, _ = make(tmp_path / "two", sim_timeout, config="all-3g.40gb")
    await sub.start()
    assert sub.state == "failed" and "GPU 2 (GPU-" in sub.reason and "did not return within" in sub.reason
    sim_timeout.hang_calls(2, 0)
    await sim_timeout.close()


def test_one_shot_apply_does_not_wait_for_operands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mig.pause_operands`` is the running agent's (its labels subsystem answers); a one-shot apply goes on."""
    monkeypatch.setenv("NODEAGENT_MIG__CONFIG", "all-balanced")
    monkeypatch.setenv("NODEAGENT_MIG__PAUSE_OPERANDS", "true")
    monkeypatch.setenv("NODEAGENT_MIG__OPERAND_WAIT_S", "600")
    root = str(tmp_path / "node")
    assert main(["apply", "--simulate", "h100-80gb-hbm3:1", "--root", root, "--only", "mig"]) == 0
    assert "mig: changed GPU 0" in capsys.readouterr().out


class KubeletPods:
    """The kubelet's pod resources as the composition root's connector hands them out: one pod holds GPU 0."""

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.sockets: list[str] = []
        self.closed = 0

    def __call__(self, socket: str) -> KubeletPods:
        self.sockets.append(socket)
        return self

    async def list(self) -> tuple[ContainerDevices, ...]:
        return (ContainerDevices("ml", "trainer-0", "main", "nvidia.com/gpu", (self.uuid,)),)

    async def close(self) -> None:
        self.closed += 1


async def test_pods_holding_a_gpu_come_from_the_contexts_kubelet_client(tmp_path: Path) -> None:
    sim = SimGpuBackend("h100-80gb-hbm3", 1, 0)
    sub, _ = make(tmp_path, sim)
    pods = KubeletPods((await sim.inventory()).gpus[0].uuid)
    sub.ctx.backends = dataclasses.replace(sub.ctx.backends, pod_resources=pods)  # type: ignore[arg-type]
    await sub.start()
    assert sub.state == "failed"
    assert f"GPU 0 ({pods.uuid}): in use by ml/trainer-0 (main) [kubelet]" in sub.reason
    assert pods.sockets == [sub.ctx.settings.kubelet.pod_resources_socket] and pods.closed == 1
    await sim.close()


async def test_the_node_label_cannot_rebuild_gpus_that_dynamic_mig_owns(tmp_path: Path) -> None:
    """With dra.dynamic_mig the DRA plugin creates and destroys the instances per claim: a mig.config label
    would destroy instances pods hold, so it is refused by name and the layouts stay as they are."""
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    s = S.replace(S.replace(S.Settings(), "deviceplugin", enabled=False), "dra", enabled=True, dynamic_mig=True)
    ctx = testing.context(Root(tmp_path), S.replace(s, "agent", state_dir="/var/lib/nodeagent"), gpus=sim)
    sub = MigSubsystem(ctx, sampling=Pauses())
    await sub.start()
    before = await sim.inventory()
    await sub.on_request(MigConfigRequest("all-1g.10gb"))
    assert sub.state == "failed"
    assert "MIG config 'all-1g.10gb' (the Node label nvidia.com/mig.config) refused: dynamic MIG" in sub.reason
    assert [g.mig_devices for g in (await sim.inventory()).gpus] == [g.mig_devices for g in before.gpus]
    await sim.close()
