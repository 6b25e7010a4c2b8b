"""GPU health end to end: XIDs injected into the simulator reach the GPU-state owner through a sweep, the gpuhealth
subsystem classifies them and writes the ``NvidiaGpuHealthy`` condition (and the taint when enabled) on the
server under test (the stand-in and the real kube-apiserver) through the Node gateway, and the metric follows.
The labels subsystem runs beside it (it shares the gateway, and writes none of these). Time is a fake clock the
test moves."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodeagent import events, testing
from nodeagent.backends.gpu.sim.backend import SimGpuBackend
from nodeagent.backends.hostfs import Root
from nodeagent.gpuhealth.subsystem import GpuHealthSubsystem
from nodeagent.labels.subsystem import LabelsSubsystem
from nodeagent.model.gpu import SampleRequest
from nodeagent.model.health import CONDITION_TYPE, TAINT_KEY
from nodeagent.settings import Settings, replace
from tests.kube.servers import ServerUnderTest, kube_client
from tests.support import until

NODE = "node-a"
WINDOW = 60.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Node:
    sim: SimGpuBackend
    health: GpuHealthSubsystem
    labels: LabelsSubsystem
    clock: Clock
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def sweep(self) -> None:
        """What the metrics subsystem's next sweep does: XIDs and health changes go out as events."""
        await self.health.ctx.gpu_state.sample(SampleRequest(frozenset()))

    def metric(self, gpu: int, watch: str) -> tuple[str, float]:
        """(health_error_code, value) of DCGM_EXP_GPU_HEALTH_STATUS as the metrics subsystem renders it:
        from the published report, the one the Node condition is written from."""
        report = self.health.ctx.bus.last(events.NODE_GPU_HEALTH)
        for g in report.gpus if report is not None else ():
            if g.index == gpu:
                verdict, code = g.watch_status()[watch]
                return code, float(int(verdict))
        raise AssertionError(f"no series for GPU {gpu} {watch}")


def settings(**health: Any) -> Settings:
    s = replace(Settings(), "agent", state_dir="/var/lib/nodeagent")
    s = replace(s, "labels", node_patch=True, start_jitter_s=0.0, retry_max_s=1.0)
    return replace(s, "gpuhealth", **{"xid_window_s": WINDOW, "min_publish_interval_s": 0.0, **health})


@contextlib.asynccontextmanager
async def running(tmp_path: Path, server: ServerUnderTest, s: Settings) -> AsyncIterator[Node]:
    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0)
    ctx = testing.context(Root(tmp_path), s, gpus=sim, node_name=NODE)
    clock = Clock()
    node = Node(sim, GpuHealthSubsystem(ctx, clock=clock), LabelsSubsystem(ctx), clock)
    ctx.node.use(kube_client(server))
    await node.health.start()
    await node.labels.start()
    node.tasks = [asyncio.create_task(node.health.run(node.stop)), asyncio.create_task(node.labels.run(node.stop))]
    try:
        yield node
    finally:
        node.stop.set()
        for task in node.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await node.labels.stop()
        await ctx.node.close()
        await sim.close()


def condition(server: ServerUnderTest) -> dict[str, Any]:
    found = server.object("nodes", NODE)
    assert found is not None
    return next(c for c in found["status"].get("conditions", []) if c["type"] == CONDITION_TYPE)


def has_condition(server: ServerUnderTest) -> bool:
    found = server.object("nodes", NODE)
    return found is not None and any(c["type"] == CONDITION_TYPE for c in found["status"].get("conditions", []))


def taints(server: ServerUnderTest) -> list[dict[str, Any]]:
    found = server.object("nodes", NODE)
    assert found is not None
    return list(found.get("spec", {}).get("taints") or [])


def condition_is(server: ServerUnderTest, status: str, reason: str) -> Callable[[], bool]:
    return lambda: (
        has_condition(server)
        and (condition(server)["status"], condition(server)["reason"])
        == (
            status,
            reason,
        )
    )


async def test_healthy_node_gets_a_true_condition_and_passing_series(
    tmp_path: Path, apiserver: ServerUnderTest
) -> None:
    async with running(tmp_path, apiserver, settings()) as node:
        await until(condition_is(apiserver, "True", "GpusHealthy"), "healthy condition")
        assert condition(apiserver)["message"] == "2 of 2 GPUs healthy"
        assert node.metric(0, "MEM") == ("DCGM_FR_OK", 0.0) and node.metric(1, "ALL") == ("DCGM_FR_OK", 0.0)
        assert taints(apiserver) == []


async def test_xid_48_sets_the_condition_and_the_window_clears_it(tmp_path: Path, apiserver: ServerUnderTest) -> None:
    async with running(tmp_path, apiserver, settings(taint=True)) as node:
        await until(condition_is(apiserver, "True", "GpusHealthy"), "healthy first")
        healthy_since = condition(apiserver)["lastTransitionTime"]
        node.sim.inject_xid(0, 48)
        await node.sweep()
        await until(condition_is(apiserver, "False", "XidDoubleBitEcc"), "unhealthy condition")
        cond = condition(apiserver)
        assert "1 of 2 GPUs unhealthy" in cond["message"] and "XID 48 double-bit ECC error" in cond["message"]
        assert node.metric(0, "MEM") == ("DCGM_FR_VOLATILE_DBE_DETECTED", 20.0)
        assert node.metric(1, "MEM") == ("DCGM_FR_OK", 0.0)
        await until(lambda: [t["key"] for t in taints(apiserver)] == [TAINT_KEY], "taint")
        assert taints(apiserver)[0]["effect"] == "NoSchedule"
        assert node.health.status().details["gpus"]["0"]["verdict"] == "fail"
        unhealthy_since = cond["lastTransitionTime"]
        assert unhealthy_since >= healthy_since

        # A second failing GPU: the message changes, the status does not, so the transition time stays.
        node.sim.inject_xid(1, 95)
        await node.sweep()
        await until(condition_is(apiserver, "False", "GpuUnhealthy"), "two GPUs unhealthy")
        assert condition(apiserver)["lastTransitionTime"] == unhealthy_since
        assert node.metric(1, "ALL") == ("DCGM_FR_UNCONTAINED_ERROR", 20.0)

        # The XID window passes without the XIDs coming back: healthy again, taint gone, series pass.
        node.clock.t += WINDOW + 1
        node.health.evaluate()
        await until(condition_is(apiserver, "True", "GpusHealthy"), "recovered")
        await until(lambda: taints(apiserver) == [], "taint removed")
        assert node.metric(0, "MEM") == ("DCGM_FR_OK", 0.0)


async def test_xid_79_gpu_off_the_bus_until_nvml_answers_and_the_window_passes(
    tmp_path: Path, apiserver: ServerUnderTest
) -> None:
    async with running(tmp_path, apiserver, settings()) as node:
        node.sim.lose_gpu(1)  # XID 79, then every call: GPU is lost
        await node.sweep()
        await until(condition_is(apiserver, "False", "GpuUnhealthy"), "lost GPU")
        message = condition(apiserver)["message"]
        assert "XID 79 GPU has fallen off the bus" in message and "NVML reports the GPU lost" in message
        assert node.metric(1, "ALL") == ("DCGM_FR_FALLEN_OFF_BUS", 20.0)
        assert taints(apiserver) == [], "no taint unless enabled"
        node.clock.t += WINDOW + 1  # the XID is old, but NVML still says lost
        node.health.evaluate()
        await asyncio.sleep(0.1)
        await until(condition_is(apiserver, "False", "GpuLost"), "still lost")
        await node.sim.reset_gpu(1)  # the GPU is back
        await node.sweep()
        await until(condition_is(apiserver, "True", "GpusHealthy"), "recovered")


async def test_xid_94_warns_and_13_is_ignored(tmp_path: Path, apiserver: ServerUnderTest) -> None:
    async with running(tmp_path, apiserver, settings(taint=True)) as node:
        node.sim.inject_xid(0, 13)
        await node.sweep()
        await asyncio.sleep(0.1)
        await until(condition_is(apiserver, "True", "GpusHealthy"), "13 ignored")
        assert node.metric(0, "ALL") == ("DCGM_FR_OK", 0.0)
        node.sim.inject_xid(0, 94)
        await node.sweep()
        await until(condition_is(apiserver, "True", "GpuWarnings"), "94 warns")
        assert "XID 94 contained ECC error" in condition(apiserver)["message"]
        assert node.metric(0, "MEM") == ("DCGM_FR_XID_ERROR", 10.0)
        assert taints(apiserver) == [], "a warning does not taint"


async def test_13_counts_when_removed_from_the_ignore_list(tmp_path: Path, apiserver: ServerUnderTest) -> None:
    async with running(tmp_path, apiserver, settings(ignored_xids=[43])) as node:
        node.sim.inject_xid(0, 13)
        await node.sweep()
        await until(condition_is(apiserver, "False", "XidCritical"), "13 counted")


async def test_a_flapping_gpu_is_held_unhealthy_and_rate_limited(tmp_path: Path, apiserver: ServerUnderTest) -> None:
    s = settings(xid_window_s=5.0, min_publish_interval_s=30.0)
    async with running(tmp_path, apiserver, s) as node:
        await until(condition_is(apiserver, "True", "GpusHealthy"), "healthy first")
        first = node.health.publishes
        for _ in range(10):  # 10 flaps in 60 s: an XID, 6 s later healthy again
            node.sim.inject_xid(0, 48)
            await node.sweep()
            await until(lambda: node.health.report is not None and not node.health.report.healthy, "seen")
            node.clock.t += 6
            node.health.evaluate()
        node.clock.t += 30
        node.health.evaluate()
        await until(condition_is(apiserver, "False", "GpuFlapping"), "held unhealthy while it flaps")
        assert "went unhealthy repeatedly" in condition(apiserver)["message"]
        node.clock.t += 3600  # healthy for the longest hold: reported healthy again
        node.health.evaluate()
        await until(condition_is(apiserver, "True", "GpusHealthy"), "the last state reaches the Node")
        assert node.health.publishes - first <= 4, node.health.publishes - first
        statuses = [
            c["status"]
            for obj in apiserver.node_history(NODE)
            for c in obj["status"].get("conditions", [])
            if c["type"] == CONDITION_TYPE
        ]
        changes = sum(1 for a, b in itertools.pairwise(statuses) if a != b)
        assert changes == 2, statuses


async def test_the_window_ends_by_itself(tmp_path: Path) -> None:
    """With the real clock: the subsystem wakes when the XID window ends, nobody has to sweep."""
    sim = SimGpuBackend("h100-80gb-hbm3", 1, 0)
    ctx = testing.context(Root(tmp_path), settings(xid_window_s=1.0), gpus=sim, node_name=NODE)
    health = GpuHealthSubsystem(ctx)
    await health.start()
    stop = asyncio.Event()
    task = asyncio.create_task(health.run(stop))
    try:
        sim.inject_xid(0, 79)
        await ctx.gpu_state.sample(SampleRequest(frozenset()))
        await until(lambda: health.published is not None and not health.published.healthy, "unhealthy")
        await until(lambda: health.published is not None and health.published.healthy, "healthy again", timeout_s=5.0)
    finally:
        stop.set()
        await task
        await sim.close()


async def test_a_steady_fault_writes_the_node_once(tmp_path: Path, apiserver: ServerUnderTest) -> None:
    async with running(tmp_path, apiserver, settings()) as node:
        node.sim.inject_xid(0, 48)
        await node.sweep()
        await until(condition_is(apiserver, "False", "XidDoubleBitEcc"), "unhealthy")
        await asyncio.sleep(0.2)
        stored = apiserver.agent_writes()
        for _ in range(5):  # the same XID again and again, inside its window
            node.clock.t += 1
            node.sim.inject_xid(0, 48)
            await node.sweep()
        await until(lambda: node.health.status().details["gpus"]["0"]["xids_seen"] == {"48": 6}, "all seen")
        await asyncio.sleep(0.2)
        assert apiserver.agent_writes() == stored


async def test_nvml_hang_sets_the_condition_until_nvml_answers(tmp_path: Path, apiserver: ServerUnderTest) -> None:
    """A GPU whose NVML calls hang is degraded by the sweep; the condition clears once a sweep reads it."""
    from nodeagent.model.gpu import Reading

    sim = SimGpuBackend("h100-80gb-hbm3", 2, 0, call_timeout_s=0.2, degraded_backoff_s=0.1)
    ctx = testing.context(Root(tmp_path), settings(), gpus=sim, node_name=NODE)
    health, labels = GpuHealthSubsystem(ctx), LabelsSubsystem(ctx)
    ctx.node.use(kube_client(apiserver))
    await health.start()
    await labels.start()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(health.run(stop)), asyncio.create_task(labels.run(stop))]
    request = SampleRequest(frozenset({Reading.GPU_TEMP_C}))
    try:
        sim.hang_calls(1, 3.0)
        await ctx.gpu_state.sample(request)
        await until(condition_is(apiserver, "False", "NvmlNotAnswering"), "hang seen")
        assert (
            "GPU 1" in condition(apiserver)["message"]
            and "NVML calls on the GPU hang" in condition(apiserver)["message"]
        )
        sim.hang_calls(1, 0)
        await asyncio.sleep(0.2)  # the degraded GPU's backoff
        await ctx.gpu_state.sample(request)
        await until(condition_is(apiserver, "True", "GpusHealthy"), "NVML answers again")
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await labels.stop()
        await ctx.node.close()
        await sim.close()


async def test_revert_takes_the_condition_and_the_taint_back(tmp_path: Path, apiserver: ServerUnderTest) -> None:
    async with running(tmp_path, apiserver, settings(taint=True)) as node:
        node.sim.inject_xid(0, 95)
        await node.sweep()
        await until(lambda: [t["key"] for t in taints(apiserver)] == [TAINT_KEY], "taint")
        node.stop.set()  # `nodeagent revert` runs with the agent stopped
        for task in node.tasks:
            await task
        assert not any("taint" in c or "conditions" in c for c in (await node.labels.revert()).changed)
        result = await node.health.revert()
        assert result.changed == (f"Node/{NODE} taint", f"Node/{NODE} conditions")
        assert taints(apiserver) == [] and not has_condition(apiserver)
        found = apiserver.object("nodes", NODE)
        assert found is not None and [c["type"] for c in found["status"]["conditions"]] == ["Ready"]
