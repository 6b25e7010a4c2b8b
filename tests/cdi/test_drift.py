"""The files a subsystem owns are put back when someone deletes or edits them (the drift watch)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nodeagent import events
from nodeagent.backends.sim import sandbox
from nodeagent.cdi.subsystem import CdiSubsystem
from nodeagent.driver import api as driver_api
from nodeagent.errors import HostPathError
from nodeagent.subsystem import Phase, Status
from nodeagent.validation.subsystem import ValidationSubsystem
from tests.driver.fakes import make_ctx
from tests.support import until

SPEC = "/var/run/cdi/nvidia.yaml"
DRIVER_READY = "/run/nvidia/validations/driver-ready"


async def test_a_deleted_or_edited_cdi_spec_is_written_again(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    cdi = CdiSubsystem(ctx)
    await cdi.start()
    original = ctx.root.read_bytes(SPEC)
    assert original and cdi.status().phase is Phase.RUNNING
    stop = asyncio.Event()
    task = asyncio.create_task(cdi.run(stop))
    try:
        ctx.root.remove(SPEC)
        await until(lambda: ctx.root.exists(SPEC))
        assert ctx.root.read_bytes(SPEC) == original
        ctx.root.write_atomic(SPEC, b"cdiVersion: 0.3.0\nkind: someone/else\n")
        await until(lambda: ctx.root.read_bytes(SPEC) == original)
        assert cdi.status().phase is Phase.RUNNING
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_a_deleted_validation_file_is_written_again(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    facts, _ = await driver_api.current_facts(ctx.root, ctx.settings)
    ctx.board.track("driver", lambda: Status(Phase.RUNNING))
    ctx.bus.publish(events.DRIVER_READY, facts)
    files = ValidationSubsystem(ctx)
    await files.start()
    content = ctx.root.read_bytes(DRIVER_READY)
    assert content
    stop = asyncio.Event()
    task = asyncio.create_task(files.run(stop))
    try:
        ctx.root.remove(DRIVER_READY)
        await until(lambda: ctx.root.exists(DRIVER_READY))
        assert ctx.root.read_bytes(DRIVER_READY) == content
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_revert_refuses_a_spec_changed_since_and_force_restores(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    ctx.root.write_atomic(SPEC, b"# hand-written\n")
    cdi = CdiSubsystem(ctx)
    await cdi.start()
    assert ctx.root.read_bytes(SPEC) != b"# hand-written\n"
    ctx.root.write_atomic(SPEC, b"# edited by someone after the agent\n")
    with pytest.raises(HostPathError) as refused:
        await cdi.revert()
    assert "--force" in str(refused.value) and SPEC in str(refused.value)
    assert ctx.root.read_bytes(SPEC) == b"# edited by someone after the agent\n", "nothing overwritten"
    cdi.force_revert = True
    assert (await cdi.revert()).changed == (SPEC,)
    assert ctx.root.read_bytes(SPEC) == b"# hand-written\n"
