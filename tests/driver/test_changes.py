"""The driver re-check reacts to change: a probe of the cheap /proc files and helper pids decides
whether a full gather is needed; inotify on the driver's files and device nodes triggers a re-check."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from nodeagent.backends.sim import sandbox
from nodeagent.driver import changes
from nodeagent.driver.subsystem import DriverSubsystem
from nodeagent.subsystem import Phase
from tests.driver.fakes import make_ctx, make_settings

PROBE = changes.Probe(files=(b"nvidia 1\n", None, b"v", b"v"), listings=((), ()), helpers=(("p", (1,)),))


def test_decide_is_none_only_when_settled_and_nothing_changed() -> None:
    same = {"settled": True, "files_changed": False, "since_full_s": 10.0}
    assert changes.decide(PROBE, PROBE, **same) is None  # type: ignore[arg-type]
    assert changes.decide(None, PROBE, **same) == "first check"  # type: ignore[arg-type]
    assert changes.decide(PROBE, PROBE, **{**same, "settled": False})  # type: ignore[arg-type]
    assert changes.decide(PROBE, PROBE, **{**same, "files_changed": True})  # type: ignore[arg-type]
    assert changes.decide(PROBE, PROBE, **{**same, "since_full_s": changes.FULL_GATHER_EVERY_S})  # type: ignore[arg-type]
    modules = changes.Probe(files=(b"", None, b"v", b"v"), listings=PROBE.listings, helpers=PROBE.helpers)
    assert changes.decide(PROBE, modules, **same) == "/proc/modules changed"  # type: ignore[arg-type]
    gpus = changes.Probe(files=PROBE.files, listings=(("0000:18:00.0",), ()), helpers=PROBE.helpers)
    assert changes.decide(PROBE, gpus, **same) == "/proc/driver/nvidia/gpus changed"  # type: ignore[arg-type]
    helper_gone = changes.Probe(files=PROBE.files, listings=PROBE.listings, helpers=(("p", ()),))
    assert changes.decide(PROBE, helper_gone, **same) == "helper processes changed"  # type: ignore[arg-type]


async def test_recheck_skips_the_gather_until_a_probed_file_changes(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(2, mig_on=(0,))
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    drv = DriverSubsystem(ctx)
    await drv.start()
    assert drv.status().phase == Phase.RUNNING, drv.status().reason
    full = drv.checks["full"]
    assert await drv.recheck() is None
    assert await drv.recheck() is None
    assert drv.checks == {"full": full, "probe_only": 2}
    # the persistence daemon exits: its pid's comm is gone
    (tmp_path / "proc/1841/comm").unlink()
    assert await drv.recheck() == "helper processes changed"
    assert drv.checks["full"] == full + 1
    assert drv.status().phase == Phase.DEGRADED and "nvidia-persistenced" in drv.status().reason
    # while it is missing, each probe scans /proc for it, and sees it come back
    assert await drv.recheck() is None
    sandbox.write_helper_process(ctx.root, 1900, "nvidia-persistenced")
    assert await drv.recheck() == "helper processes changed"
    assert drv.status().phase == Phase.RUNNING
    assert await drv.recheck() is None
    # the kernel module is replaced by another version (an upgrade under us): seen at the next probe
    version = tmp_path / "proc/driver/nvidia/version"
    text = version.read_text()
    version.write_text(text.replace("580.159.04", "580.200.01"))
    assert await drv.recheck() == "/proc/driver/nvidia/version changed"
    assert drv.status().phase == Phase.FAILED, "kernel module and library versions differ"
    # not ready: every re-check is a full one until it is ready again
    assert await drv.recheck() == "the last check found the driver not ready or failing"
    version.write_text(text)
    assert await drv.recheck() is not None
    assert drv.status().phase == Phase.RUNNING
    assert await drv.recheck() is None


async def test_a_removed_device_node_is_seen_by_inotify_and_made_again(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(2)
    ctx = make_ctx(tmp_path, inv, make_settings(driver={"recheck_s": 3600}))
    sandbox.populate_sandbox(ctx.root, inv)
    drv = DriverSubsystem(ctx)
    await drv.start()
    stop = asyncio.Event()
    task = asyncio.create_task(drv.run(stop))
    try:
        node = tmp_path / "dev/nvidia1"
        for _ in range(100):  # the watches are in place once the status counts them
            if drv.status().details.get("watched_files"):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        full = drv.checks["full"]
        node.unlink()
        for _ in range(200):
            if node.exists() and drv.checks["full"] > full:
                break
            await asyncio.sleep(0.02)
        assert node.exists(), "the device node was not made again within 4 s (no inotify re-check)"
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
