"""The validation files have one owner; each follows its condition, and revert removes them all."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent import events, testing
from nodeagent.backends.hostfs import Root
from nodeagent.backends.sim import sandbox
from nodeagent.driver import api as driver_api
from nodeagent.model.mig import MigReadiness
from nodeagent.subsystem import Phase, Status
from nodeagent.validation import files
from nodeagent.validation.subsystem import ValidationSubsystem

DIR = "/run/nvidia/validations"


async def ready_node(tmp_path: Path) -> tuple[ValidationSubsystem, Root]:
    inv = sandbox.sandbox_inventory(1)
    ctx = testing.context(Root(tmp_path), inventory=inv)
    sandbox.populate_sandbox(ctx.root, inv)
    facts, problems = await driver_api.current_facts(ctx.root, ctx.settings)
    assert facts is not None, problems
    ctx.board.track("driver", lambda: Status(Phase.RUNNING))
    ctx.bus.publish(events.DRIVER_READY, facts)
    return ValidationSubsystem(ctx), ctx.root


@pytest.mark.parametrize(
    ("runtime", "mig", "present"),
    [
        (None, None, {"driver-ready"}),
        (True, None, {"driver-ready", "toolkit-ready"}),
        (False, None, {"driver-ready"}),
        (True, MigReadiness("all-1g.10gb", "success"), {"driver-ready", "toolkit-ready", "mig-ready"}),
        (True, MigReadiness("all-1g.10gb", "pending"), {"driver-ready", "toolkit-ready"}),
        (None, MigReadiness("all-1g.10gb", "rebooting", "reset not possible"), {"driver-ready"}),
    ],
)
async def test_each_file_follows_its_condition(
    tmp_path: Path, runtime: bool | None, mig: MigReadiness | None, present: set[str]
) -> None:
    sub, root = await ready_node(tmp_path)
    root.write_atomic(f"{DIR}/mig-ready", b"")  # left by an earlier run: removed unless MIG says success
    if runtime is not None:
        sub.ctx.bus.publish(events.RUNTIME_HEALTHY, runtime)
    if mig is not None:
        sub.ctx.bus.publish(events.MIG_READY, mig)
    await sub.reconcile(None)
    on_disk = {name for name in files.ALL if root.exists(f"{DIR}/{name}")}
    expected = present | ({"mig-ready"} if mig is None else set())  # no MIG news: the file is left alone
    assert on_disk == expected
    assert sub.status().phase is Phase.RUNNING
    again = sub.plan(await sub.observe())
    assert again.empty, "a second pass changes nothing"


async def test_driver_gone_removes_driver_and_toolkit_ready(tmp_path: Path) -> None:
    sub, root = await ready_node(tmp_path)
    sub.ctx.bus.publish(events.RUNTIME_HEALTHY, True)
    await sub.reconcile(None)
    assert root.exists(f"{DIR}/driver-ready") and root.exists(f"{DIR}/toolkit-ready")
    sub.ctx.bus.publish(events.DRIVER_READY, None)
    plan = sub.plan(await sub.observe())
    assert [(s.action, s.target) for s in plan.steps] == [
        ("remove-file", f"{DIR}/driver-ready"),
        ("remove-file", f"{DIR}/toolkit-ready"),
    ]
    await sub.apply(plan)
    assert not root.exists(f"{DIR}/driver-ready") and not root.exists(f"{DIR}/toolkit-ready")


async def test_before_the_driver_says_anything_nothing_is_touched(tmp_path: Path) -> None:
    ctx = testing.context(Root(tmp_path), inventory=sandbox.sandbox_inventory(1))
    ctx.board.track("driver", lambda: Status(Phase.STARTING))
    ctx.root.write_atomic(f"{DIR}/driver-ready", b"IS_HOST_DRIVER=true\n")
    sub = ValidationSubsystem(ctx)
    assert sub.plan(await sub.observe()).empty


async def test_revert_removes_every_file(tmp_path: Path) -> None:
    sub, root = await ready_node(tmp_path)
    sub.ctx.bus.publish(events.RUNTIME_HEALTHY, True)
    sub.ctx.bus.publish(events.MIG_READY, MigReadiness("c", "success"))
    await sub.reconcile(None)
    result = await sub.revert()
    assert sorted(result.changed) == sorted(f"{DIR}/{n}" for n in files.ALL)
    assert not any(root.exists(f"{DIR}/{n}") for n in files.ALL)
    assert (await sub.revert()).changed == ()
