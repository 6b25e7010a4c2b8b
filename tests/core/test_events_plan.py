"""Event bus semantics and plan rendering."""

from __future__ import annotations

import asyncio

from nodeagent import events
from nodeagent.plan import Disruption, Plan, Step, file_diff, render_plans


async def test_latched_topics_wake_late_waiters() -> None:
    bus = events.EventBus()
    bus.publish(events.DRIVER_READY, {"root": "/"})
    assert await asyncio.wait_for(bus.wait_for(events.DRIVER_READY), 1) == {"root": "/"}


async def test_wait_for_blocks_until_predicate_holds() -> None:
    bus = events.EventBus()
    waiter = asyncio.create_task(bus.wait_for(events.RUNTIME_HEALTHY))
    bus.publish(events.RUNTIME_HEALTHY, False)
    await asyncio.sleep(0)
    assert not waiter.done()
    bus.publish(events.RUNTIME_HEALTHY, True)
    assert await asyncio.wait_for(waiter, 1) is True


async def test_slow_subscriber_keeps_latest_events_only() -> None:
    bus = events.EventBus()
    sub = bus.subscribe(events.XID, maxsize=2)
    for xid in (13, 31, 79):
        bus.publish(events.XID, xid)
    bus.publish(events.MIG_CHANGED, None)  # other topic: not delivered
    assert [(await sub.get()).payload for _ in range(2)] == [31, 79]
    sub.close()
    bus.publish(events.XID, 48)
    assert sub._queue.empty()


def test_plan_rendering_shows_evidence_disruption_and_diff() -> None:
    diff = file_diff("/etc/docker/daemon.json", b'{\n  "a": 1\n}\n', b'{\n  "a": 2\n}\n')
    assert '-  "a": 1' in diff and '+  "a": 2' in diff and "a/etc/docker/daemon.json" in diff
    plan = Plan(
        "runtime",
        (
            Step("write-file", "/etc/docker/daemon.json", "add runtime nvidia", diff),
            Step("restart", "docker", "reload dockerd", disruption=Disruption.RELOAD, disrupts="dockerd"),
        ),
        evidence=("engine docker: /etc/docker/daemon.json exists",),
    )
    text = render_plans([plan, Plan("driver")])
    assert "evidence: engine docker" in text and "[reload (dockerd)]" in text
    assert "no changes: already in the desired state" in text
    assert plan.disruption == Disruption.RELOAD and Plan("x").disruption == Disruption.NONE
    assert plan.to_json()["steps"][1]["disruption"] == "reload"


def test_new_file_diff_is_from_dev_null() -> None:
    assert file_diff("/x", None, b"a\n").startswith("--- /dev/null")
