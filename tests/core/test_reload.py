"""The settings-reload rule: a changed section restarts exactly the subsystems that read it.

The agent's own sections (``agent``, ``simulation``, ``gpu``) are read while composing the process; a
change there is logged as needing a restart and the old values stay.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from nodeagent import events, testing
from nodeagent.app import Agent
from nodeagent.backends.hostfs import Root
from nodeagent.backends.runtimectl import SimRuntimeControl
from nodeagent.runtime.subsystem import RuntimeSubsystem
from nodeagent.settings import changed_sections, replace
from tests.core.test_agent import fast_settings
from tests.runtime.conftest import fixture
from tests.support import until

CONFIG = "/etc/containerd/config.toml"


def test_changed_sections_names_only_what_differs() -> None:
    old = fast_settings()
    new = replace(replace(old, "runtime", runtime_class="x"), "metrics", interval_s=3.0)
    assert changed_sections(old, new) == ["runtime", "metrics"]
    assert changed_sections(old, old) == []


async def test_a_reload_reaches_the_runtime_subsystem(tmp_path: Path) -> None:
    root = Root(tmp_path)
    local = root.resolve(CONFIG)
    local.parent.mkdir(parents=True)
    local.write_bytes(fixture("containerd-1.6.20-default.toml"))
    settings = fast_settings()
    ctx = testing.context(root, settings, runtime_control=SimRuntimeControl(version_text="1.6.20"))
    agent = Agent(testing.parts(ctx, [RuntimeSubsystem(ctx)]))
    task = asyncio.create_task(agent.run())
    try:
        await until(agent.ready)
        assert b"runtimes.nvidia]" in local.read_bytes()
        first = agent.subsystems["runtime"]

        # a section no running subsystem reads: nothing restarts, the new values are in the context
        assert await agent.apply_settings(replace(settings, "metrics", interval_s=7.0)) == []
        assert agent.subsystems["runtime"] is first and ctx.settings.metrics.interval_s == 7.0

        # the agent's own section cannot change in a running process: kept, nothing restarts
        moved = replace(ctx.settings, "agent", listen="127.0.0.1:1")
        assert await agent.apply_settings(moved) == []
        assert ctx.settings.agent.listen == settings.agent.listen

        # the runtime's section: the runtime subsystem restarts with it and writes the new handler
        renamed = replace(ctx.settings, "runtime", runtime_class="nvidia-reloaded")
        assert await agent.apply_settings(renamed) == ["runtime"]
        assert ctx.bus.last(events.SETTINGS_RELOADED) is ctx.settings
        fresh = agent.subsystems["runtime"]
        assert fresh is not first and isinstance(fresh, RuntimeSubsystem)
        assert fresh.settings.runtime_class == "nvidia-reloaded"
        await until(lambda: b"runtimes.nvidia-reloaded]" in local.read_bytes() and agent.ready())
    finally:
        agent.request_stop()
        assert await asyncio.wait_for(task, 10) == 0


async def test_a_reload_of_the_driver_root_in_runtime_reaches_driver_ready(tmp_path: Path) -> None:
    """``cdi.driver_root_in_runtime`` is a driver fact: the driver restarts and driver-ready follows."""
    from nodeagent.backends.sim import sandbox
    from nodeagent.driver.subsystem import DriverSubsystem
    from nodeagent.validation.subsystem import ValidationSubsystem

    inv = sandbox.sandbox_inventory(1)
    settings = fast_settings()
    ctx = testing.context(Root(tmp_path), settings, inventory=inv)
    sandbox.populate_sandbox(ctx.root, inv)
    agent = Agent(testing.parts(ctx, [DriverSubsystem(ctx), ValidationSubsystem(ctx)]))
    ready_file = ctx.root.resolve(settings.driver.validations_dir) / "driver-ready"
    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: agent.ready() and ready_file.exists())
        assert b"NVIDIA_DRIVER_ROOT=/\n" in ready_file.read_bytes()

        moved = replace(ctx.settings, "cdi", driver_root_in_runtime="/run/nvidia/driver")
        restarted = await agent.apply_settings(moved)
        assert "driver" in restarted
        # the file is removed and written again while the driver restarts
        await until(
            lambda: ready_file.exists() and b"NVIDIA_DRIVER_ROOT=/run/nvidia/driver\n" in ready_file.read_bytes()
        )
    finally:
        agent.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
