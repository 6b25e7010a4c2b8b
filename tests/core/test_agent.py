"""The agent: dependency order, supervision with backoff, readiness over HTTP, signals, sd_notify."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nodeagent.app import Agent
from nodeagent.backends.hostfs import Root
from nodeagent.backends.sdnotify import Notifier
from nodeagent.errors import ConfigError
from nodeagent.settings import Settings, load, replace
from nodeagent.subsystem import Phase, make_plan
from tests.core.fakes import Scripted, make_context, make_parts
from tests.support import free_port, until


def fast_settings(**agent: Any) -> Settings:
    base = replace(
        load(),
        "agent",
        listen=f"127.0.0.1:{free_port()}",
        restart_backoff_initial_s=0.01,
        restart_backoff_max_s=0.04,
        shutdown_timeout_s=1.0,
    )
    return replace(base, "agent", **agent) if agent else base


def make_agent(tmp_path: Path, subs: list[Any], settings: Settings | None = None, **kwargs: Any) -> Agent:
    settings = settings or fast_settings()
    ctx = make_context(Root(tmp_path), settings)
    built = [factory(ctx) for factory in subs]
    return Agent(make_parts(Root(tmp_path), settings, built, ctx=ctx), **kwargs)


async def test_subsystems_start_after_their_requirements_and_stop_in_reverse(tmp_path: Path) -> None:
    journal: list[str] = []

    def sub(name: str, requires: tuple[str, ...] = (), **kw: Any) -> Any:
        def factory(ctx: Any) -> Scripted:
            s = Scripted(ctx, name=name, requires=requires, **kw)
            s.journal = journal
            return s

        return factory

    # The driver fails its first two starts: dependents must wait for it, not start early.
    agent = make_agent(
        tmp_path, [sub("driver", fail_starts=2), sub("runtime", ("driver",)), sub("metrics", ("driver", "runtime"))]
    )
    task = asyncio.create_task(agent.run())
    await until(agent.ready)
    starts = [e for e in journal if e.startswith("start")]
    assert starts == ["start:driver", "start:driver", "start:driver", "start:runtime", "start:metrics"]
    agent.request_stop("test")
    assert await asyncio.wait_for(task, 5) == 0
    stops = [e for e in journal if e.startswith("stop")]
    assert stops[-3:] == ["stop:metrics", "stop:runtime", "stop:driver"]


async def test_a_crashing_subsystem_is_restarted_with_backoff_and_never_takes_others_down(tmp_path: Path) -> None:
    agent = make_agent(
        tmp_path, [lambda c: Scripted(c, name="flaky", crash_runs=3), lambda c: Scripted(c, name="steady")]
    )
    task = asyncio.create_task(agent.run())
    flaky, steady = agent.subsystems["flaky"], agent.subsystems["steady"]
    await until(steady.running.is_set)  # type: ignore[attr-defined]
    await until(flaky.running.is_set)  # type: ignore[attr-defined]
    assert flaky.calls.count("run") == 4  # type: ignore[attr-defined]
    assert steady.calls == ["start", "run"]  # type: ignore[attr-defined]
    assert agent._restarts["flaky"] == 3
    agent.request_stop()
    assert await asyncio.wait_for(task, 5) == 0


async def test_backoff_delays_grow_exponentially_with_jitter(tmp_path: Path) -> None:
    settings = fast_settings(restart_backoff_initial_s=0.05, restart_backoff_max_s=0.2)
    agent = make_agent(tmp_path, [lambda c: Scripted(c, name="flaky", crash_runs=4)], settings)
    delays: list[float] = []
    original = agent._override

    def spy(name: str, status: Any) -> None:
        if status.phase == Phase.FAILED and "retry_in_s" in status.details:
            delays.append(status.details["retry_in_s"])
        original(name, status)

    agent._override = spy  # type: ignore[method-assign]
    task = asyncio.create_task(agent.run())
    await until(lambda: len(delays) == 4)
    agent.request_stop()
    await asyncio.wait_for(task, 5)
    for got, nominal in zip(delays, [0.05, 0.1, 0.2, 0.2], strict=True):
        assert nominal * 0.8 <= got <= nominal * 1.2


async def test_permanent_failure_is_not_retried_and_readyz_says_why(tmp_path: Path) -> None:
    agent = make_agent(
        tmp_path,
        [
            lambda c: Scripted(c, name="driver", fail_starts=1, permanent=True),
            lambda c: Scripted(c, name="runtime", requires=("driver",)),
        ],
    )
    task = asyncio.create_task(agent.run())
    await until(lambda: agent.statuses()["driver"].phase == Phase.FAILED)
    url = f"http://{agent.ctx.settings.agent.listen}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/readyz") as resp:
            body = await resp.text()
            assert resp.status == 503
        assert "driver failed: driver cannot start, ever" in body
        assert "runtime pending: waiting for driver" in body
        async with http.get(f"{url}/healthz") as resp:
            assert resp.status == 200 and (await resp.json())["ok"] is True
    assert agent.subsystems["driver"].calls == ["start"]  # type: ignore[attr-defined]
    agent.request_stop()
    assert await asyncio.wait_for(task, 5) == 0


async def test_readyz_and_status_when_everything_runs(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, [lambda c: Scripted(c, name="driver")])
    task = asyncio.create_task(agent.run())
    await until(agent.ready)
    url = f"http://{agent.ctx.settings.agent.listen}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/readyz") as resp:
            assert resp.status == 200 and (await resp.text()).startswith("ready\ndriver running")
        async with http.get(f"{url}/status") as resp:
            doc = await resp.json()
    assert doc["ready"] is True and doc["subsystems"]["driver"]["phase"] == "running"
    served = await agent.ctx.gpus.inventory()
    assert [g["uuid"] for g in doc["inventory"]["gpus"]] == [g.uuid for g in served.gpus]
    assert len(served.gpus) == 2
    assert doc["inventory"]["topology"] == [{"gpus": [0, 1], "level": "SYSTEM", "nvlinks": 18}]  # HGX, two sockets
    agent.request_stop()
    await asyncio.wait_for(task, 5)


async def test_sigterm_stops_everything_and_exits_zero(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, [lambda c: Scripted(c, name="driver")])
    task = asyncio.create_task(agent.run())
    await until(agent.ready)
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 5) == 0
    assert agent.statuses()["driver"].phase == Phase.STOPPED
    assert agent.ctx.gpus.closed  # type: ignore[attr-defined]


async def test_a_subsystem_that_will_not_stop_is_cancelled_within_the_timeout(tmp_path: Path) -> None:
    settings = fast_settings(shutdown_timeout_s=0.2)
    agent = make_agent(tmp_path, [lambda c: Scripted(c, name="slow", stop_delay_s=30)], settings)
    task = asyncio.create_task(agent.run())
    await until(agent.ready)
    loop = asyncio.get_running_loop()
    started = loop.time()
    agent.request_stop()
    assert await asyncio.wait_for(task, 5) == 0
    assert loop.time() - started < 2.0


async def test_sighup_reloads_valid_settings_and_keeps_old_ones_when_invalid(tmp_path: Path) -> None:
    good = fast_settings()
    candidates: list[Any] = [
        ConfigError("bad value", key="metrics.interval_s"),
        replace(good, "metrics", interval_s=5.0),
    ]

    def reload() -> Settings:
        item = candidates.pop(0)
        if isinstance(item, Exception):
            raise item
        return item  # type: ignore[no-any-return]

    agent = make_agent(tmp_path, [lambda c: Scripted(c, name="driver")], good, reload_settings=reload)
    task = asyncio.create_task(agent.run())
    await until(agent.ready)
    os.kill(os.getpid(), signal.SIGHUP)
    await until(lambda: len(candidates) == 1)
    assert agent.ctx.settings.metrics.interval_s == good.metrics.interval_s
    os.kill(os.getpid(), signal.SIGHUP)
    await until(lambda: agent.ctx.settings.metrics.interval_s == 5.0)
    agent.request_stop()
    await asyncio.wait_for(task, 5)


async def test_sd_notify_ready_watchdog_and_stopping_over_a_real_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "100000"})  # watchdog every 50 ms
    assert notifier.watchdog_interval_s == pytest.approx(0.05)
    agent = make_agent(tmp_path, [lambda c: Scripted(c, name="driver")], notifier=notifier)
    task = asyncio.create_task(agent.run())
    loop = asyncio.get_running_loop()
    received: list[str] = []
    while received.count("WATCHDOG=1") < 2:
        received.append((await asyncio.wait_for(loop.sock_recv(server, 64), 5)).decode())
    agent.request_stop()
    await asyncio.wait_for(task, 5)
    while "STOPPING=1" not in received:
        received.append((await asyncio.wait_for(loop.sock_recv(server, 64), 5)).decode())
    server.close()
    assert received[0] == "READY=1"
    assert received.index("STOPPING=1") > received.index("WATCHDOG=1")


def test_notifier_is_a_no_op_without_notify_socket_and_ignores_other_pids_watchdog() -> None:
    assert Notifier({}).send("READY=1") is False
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    assert Notifier({"NOTIFY_SOCKET": "@abstract"}).address == "\0abstract"


async def test_status_describes_the_agent_and_the_last_plans(tmp_path: Path) -> None:
    """/status carries the agent's own description and each subsystem's latest plan, as JSON."""
    agent = make_agent(tmp_path, [lambda c: Scripted(c, name="driver")])
    task = asyncio.create_task(agent.run())
    await until(agent.ready)
    sub = agent.subsystems["driver"]
    assert isinstance(sub, Scripted)
    await make_plan(sub)
    async with aiohttp.ClientSession() as http, http.get(f"http://{agent.ctx.settings.agent.listen}/status") as r:
        assert r.content_type == "application/json"
        doc = await r.json()
    agent.request_stop()
    await asyncio.wait_for(task, 5)
    assert doc["root"] == str(tmp_path) and doc["node_name"] == "test-node" and doc["simulate"] is True
    assert [s["target"] for s in doc["last_plans"]["driver"]["steps"]] == ["/nothing"]
