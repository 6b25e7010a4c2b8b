"""`cdi_spec_drift` means someone changed the spec: not the drift watch's first look right after the agent
wrote its own spec, nor the agent's own later writes (issue 23 item 25)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from nodeagent.backends.sim import sandbox
from nodeagent.cdi.subsystem import CdiSubsystem
from tests.driver.fakes import make_ctx

SPEC = "/var/run/cdi/nvidia.yaml"


class WatchedCdi(CdiSubsystem):
    """The CDI subsystem, counting each time its drift watch asked it to look."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.looks: asyncio.Queue[None] = asyncio.Queue()

    async def _on_drift(self) -> None:
        await super()._on_drift()
        self.looks.put_nowait(None)


async def test_drift_is_logged_only_when_someone_else_changed_the_spec(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    cdi = WatchedCdi(ctx)
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        await cdi.start()
        assert [e["event"] for e in logs if e["event"].startswith("cdi_spec")] == ["cdi_spec_written"]
        task = asyncio.create_task(cdi.run(stop))
        try:
            await asyncio.wait_for(cdi.looks.get(), 10)  # the watch's first look, right after our own write
            assert [e["event"] for e in logs if e["event"].startswith("cdi_spec")] == ["cdi_spec_written"]
            ctx.root.remove(SPEC)
            while not ctx.root.exists(SPEC):
                await asyncio.wait_for(cdi.looks.get(), 10)
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
    cdi_events = [e["event"] for e in logs if e["event"].startswith("cdi_spec")]
    assert cdi_events == ["cdi_spec_written", "cdi_spec_written", "cdi_spec_drift"]
