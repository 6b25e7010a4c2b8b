"""The driver subsystem on sandbox nodes: plan evidence, module loading, device nodes, versions,
validation files, readiness on the bus, and every bad input of issue 5 point 9."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from nodeagent import events
from nodeagent.backends.chardevs import inspect, placeholder_bytes
from nodeagent.backends.hostfs import Root
from nodeagent.backends.sim import sandbox
from nodeagent.backends.sim.modprobe import SimModprobe
from nodeagent.driver.subsystem import DriverSubsystem
from nodeagent.model.driver import DriverFacts
from nodeagent.subsystem import Context, Phase, Status
from nodeagent.validation.subsystem import ValidationSubsystem
from tests.driver.fakes import host_node, make_ctx, make_settings, prefixed_node, real_usr_local_nvidia
from tests.support import until

VERSION = "580.159.04"
READY = "/run/nvidia/validations/driver-ready"
TOOLKIT = "/run/nvidia/validations/toolkit-ready"


async def _validation_files(ctx: Context) -> ValidationSubsystem:
    """The validation subsystem reacting once to what the driver published (it owns the files)."""
    files = ValidationSubsystem(ctx)
    ctx.board.track("driver", lambda: Status(Phase.RUNNING))
    await files.reconcile(None)
    return files


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


async def test_ready_host_driver_publishes_facts_and_writes_driver_ready(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(2)
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    drv = DriverSubsystem(ctx)
    await drv.start()
    st = drv.status()
    assert st.phase == Phase.RUNNING, st.reason
    assert st.details["driver_root"] == "/"
    assert st.details["kernel_module_version"] == VERSION == st.details["library_version"]
    facts = ctx.bus.last(events.DRIVER_READY)
    assert isinstance(facts, DriverFacts)
    assert facts.modules == ("nvidia", "nvidia_uvm", "nvidia_modeset")
    assert "/dev/nvidia-uvm-tools" in facts.device_nodes
    await _validation_files(ctx)
    assert ctx.root.read_text(READY) == (
        f"IS_HOST_DRIVER=true\nNVIDIA_DRIVER_ROOT=/\nDRIVER_ROOT_CTR_PATH={tmp_path}\n"
        f"NVIDIA_DEV_ROOT=/\nDEV_ROOT_CTR_PATH={tmp_path}\n"
    )
    assert ctx.registry.get_sample_value("nodeagent_driver_ready") == 1
    labels = {"kernel_module_version": VERSION, "library_version": VERSION}
    assert ctx.registry.get_sample_value("nodeagent_driver_info", labels) == 1
    # a second pass changes nothing and publishes nothing new
    before = _tree(tmp_path)
    sub = ctx.bus.subscribe(events.DRIVER_READY)
    await drv.reconcile()
    assert _tree(tmp_path) == before
    assert sub._queue.empty()


async def test_plan_shows_root_evidence_and_changes_nothing(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1, mig_on=(0,))
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    before = _tree(tmp_path)
    drv = DriverSubsystem(ctx)
    plan = drv.plan(await drv.observe())
    assert plan.error == ""
    assert plan.evidence[0] == "driver root / (first candidate holding a driver, debian layout)"
    assert any("libnvidia-ml: /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.159.04" in e for e in plan.evidence)
    assert any(e.startswith("NVIDIA modules loaded") for e in plan.evidence)
    # the MIG capabilities of GPU 0 have no /dev/nvidia-caps node yet
    targets = [s.target for s in plan.steps if s.action == "create-device-node"]
    assert targets == [f"/dev/nvidia-caps/nvidia-cap{m}" for m in (12, 13, 21, 22)]
    assert not any(s.target == READY for s in plan.steps), "the validation files are not the driver's"
    assert _tree(tmp_path) == before


async def test_device_nodes_created_with_numbers_from_proc(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1, mig_on=(0,))
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    (tmp_path / "dev/nvidia-uvm-tools").unlink()
    (tmp_path / "dev/nvidia-uvm").write_bytes(placeholder_bytes(238, 7))  # wrong minor
    drv = DriverSubsystem(ctx)
    await drv.apply(drv.plan(await drv.observe()))
    for path, numbers in {
        "/dev/nvidia-uvm": (238, 0),
        "/dev/nvidia-uvm-tools": (238, 1),
        "/dev/nvidia-caps/nvidia-cap12": (241, 12),
        "/dev/nvidia-caps/nvidia-cap13": (241, 13),
    }.items():
        state = inspect(ctx.root, "/", path)
        assert state is not None and (state.major, state.minor) == numbers, path


async def test_separate_dev_root(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    root = prefixed_node(tmp_path, inv, "/run/nvidia/driver", "debian")
    shutil.rmtree(tmp_path / "dev")
    ctx = make_ctx(tmp_path, inv, make_settings(driver={"dev_root": "/run/nvidia/driver"}))
    drv = DriverSubsystem(ctx)
    await drv.start()
    assert drv.status().phase == Phase.DEGRADED  # no nvidia-persistenced in this tree
    assert inspect(root, "/run/nvidia/driver", "/dev/nvidia-uvm") is not None
    assert not (tmp_path / "dev/nvidia-uvm").exists()
    await _validation_files(ctx)
    text = root.read_text(READY) or ""
    assert "IS_HOST_DRIVER=false\nNVIDIA_DRIVER_ROOT=/run/nvidia/driver\n" in text
    assert "NVIDIA_DEV_ROOT=/run/nvidia/driver\n" in text


async def test_real_usr_local_nvidia_node(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    root = real_usr_local_nvidia(tmp_path)
    sandbox.write_kernel_state(root, inv, modules=("nvidia", "nvidia_uvm"))
    sandbox.write_device_placeholders(root, inv)
    ctx = make_ctx(tmp_path, inv)
    drv = DriverSubsystem(ctx)
    await drv.start()
    st = drv.status()
    assert st.ready, st.reason
    assert st.details["driver_root"] == "/usr/local/nvidia" and st.details["layout"] == "flat"
    assert "nvidia-persistenced is not running" in st.reason  # statuses only, nothing restarted


async def test_missing_modules_are_loaded_in_order_with_the_fake_modprobe(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(2)
    root = Root(tmp_path)
    sandbox.write_driver_files(root, "/", VERSION)
    sandbox.write_kernel_state(root, inv, modules=())
    sandbox.write_helper_process(root, 77, "nvidia-persistenced")
    settings = make_settings(driver={"load_modules": True, "enable_rdma": True, "module_params": {"nvidia": ["a=1"]}})
    ctx = make_ctx(tmp_path, inv, settings)
    loader = SimModprobe(root, version=VERSION, inventory=inv)
    drv = DriverSubsystem(ctx, loader=loader)
    plan = drv.plan(await drv.observe())
    assert [s.target for s in plan.steps] == ["nvidia", "nvidia-uvm", "nvidia-modeset", "nvidia-peermem"]
    assert plan.steps[0].summary.startswith("modprobe nvidia a=1")
    assert "kernel module version: known once nvidia is loaded" in plan.evidence
    await drv.start()
    assert [c[0] for c in loader.calls] == ["nvidia", "nvidia-uvm", "nvidia-modeset", "nvidia-peermem"]
    assert loader.calls[0] == ("nvidia", ("a=1",))
    assert drv.status().phase == Phase.RUNNING, drv.status().reason
    assert root.exists("/dev/nvidia1") and root.exists("/dev/nvidia-uvm-tools")
    await _validation_files(ctx)
    assert root.exists(READY)
    assert ctx.bus.last(events.DRIVER_READY).modules == (
        "nvidia",
        "nvidia_uvm",
        "nvidia_modeset",
        "nvidia_peermem",
    )


async def test_modules_missing_without_load_modules_is_a_failure(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    root = Root(tmp_path)
    sandbox.write_driver_files(root, "/", VERSION)
    sandbox.write_kernel_state(root, inv, modules=())
    root.write_atomic(READY, b"IS_HOST_DRIVER=true\n")  # left from an earlier, healthy run
    ctx = make_ctx(tmp_path, inv)
    drv = DriverSubsystem(ctx)
    await drv.start()
    assert drv.status().phase == Phase.FAILED
    assert drv.status().reason == "kernel module nvidia is not loaded and driver.load_modules is false"
    await _validation_files(ctx)
    assert not root.exists(READY)
    assert ctx.bus.last(events.DRIVER_READY) is None


async def test_nouveau_blocks_loading(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    root = Root(tmp_path)
    sandbox.write_driver_files(root, "/", VERSION)
    root.write_atomic("/proc/modules", b"nouveau 2301952 0 - Live 0xffffffffc0a00000\n")
    root.write_atomic("/sys/module/nouveau/initstate", b"live\n")
    ctx = make_ctx(tmp_path, inv, make_settings(driver={"load_modules": True}))
    loader = SimModprobe(root, version=VERSION)
    drv = DriverSubsystem(ctx, loader=loader)
    await drv.start()
    assert loader.calls == []  # nothing attempted while nouveau holds the GPUs
    assert drv.status().phase == Phase.FAILED
    assert "nouveau" in drv.status().reason and "blacklist nouveau" in drv.status().reason


async def test_modprobe_failure_is_reported(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    root = Root(tmp_path)
    sandbox.write_driver_files(root, "/", VERSION)
    sandbox.write_kernel_state(root, inv, modules=())
    ctx = make_ctx(tmp_path, inv, make_settings(driver={"load_modules": True}))
    loader = SimModprobe(
        root,
        version=VERSION,
        failures={"nvidia": "modprobe: ERROR: could not insert 'nvidia': Key was rejected by service"},
    )
    drv = DriverSubsystem(ctx, loader=loader)
    await drv.start()
    assert drv.status().phase == Phase.FAILED
    assert "loading nvidia failed" in drv.status().reason and "Key was rejected" in drv.status().reason
    assert not root.exists(READY)


async def test_version_mismatch_is_a_named_failure_and_a_metric(tmp_path: Path) -> None:
    kernel_inv = sandbox.sandbox_inventory(1, driver_version="580.159.04")
    root = Root(tmp_path)
    sandbox.write_driver_files(root, "/", "580.126.09")  # user space upgraded, old module still loaded
    sandbox.write_kernel_state(root, kernel_inv)
    sandbox.write_device_placeholders(root, kernel_inv)
    ctx = make_ctx(tmp_path, kernel_inv)
    drv = DriverSubsystem(ctx)
    await drv.start()
    st = drv.status()
    assert st.phase == Phase.FAILED
    assert st.reason.startswith("driver/library version mismatch: kernel module 580.159.04, libnvidia-ml 580.126.09 (")
    assert ctx.registry.get_sample_value("nodeagent_driver_version_ok") == 0
    labels = {"kernel_module_version": "580.159.04", "library_version": "580.126.09"}
    assert ctx.registry.get_sample_value("nodeagent_driver_info", labels) == 1
    assert ctx.bus.last(events.DRIVER_READY) is None


async def test_minimum_version_from_settings(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1, driver_version="535.104.05")
    ctx = make_ctx(tmp_path, inv, make_settings(driver={"min_version": "550"}))
    sandbox.populate_sandbox(ctx.root, inv)
    drv = DriverSubsystem(ctx)
    await drv.start()
    assert drv.status().reason == "driver 535.104.05 is older than the minimum 550 (driver.min_version)"


async def test_garbage_in_version_file_fails_clearly_and_writes_nothing(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    (tmp_path / "proc/driver/nvidia/version").write_bytes(b"\x00\x13garbage\xff\n")
    before = _tree(tmp_path)
    drv = DriverSubsystem(ctx)
    plan = drv.plan(await drv.observe())
    assert "/proc/driver/nvidia/version" in plan.error
    await drv.start()
    assert drv.status().phase == Phase.FAILED
    assert drv.status().reason.startswith("unreadable driver version: /proc/driver/nvidia/version")
    assert _tree(tmp_path) == before  # no driver-ready, no device nodes, nothing half-written


async def test_garbage_in_proc_modules(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    (tmp_path / "proc/modules").write_text("this is not a module list\n")
    drv = DriverSubsystem(ctx)
    await drv.start()
    assert drv.status().phase == Phase.FAILED
    assert "/proc/modules:1: not a /proc/modules line" in drv.status().reason


async def test_missing_capabilities_folder_degrades_only(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    for p in sorted((tmp_path / "proc/driver/nvidia/capabilities").rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    (tmp_path / "proc/driver/nvidia/capabilities").rmdir()
    (tmp_path / "dev/nvidia-uvm").unlink()
    drv = DriverSubsystem(ctx)
    await drv.start()
    st = drv.status()
    assert st.phase == Phase.DEGRADED
    assert "/proc/driver/nvidia/capabilities is missing" in st.reason
    assert ctx.root.exists("/dev/nvidia-uvm")  # the rest of the node is still set up
    assert ctx.bus.last(events.DRIVER_READY) is not None


async def test_partial_driver_root_fails_and_writes_nothing(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    root = Root(tmp_path)
    sandbox.write_driver_files(root, "/", VERSION, bins=())
    sandbox.write_kernel_state(root, inv)
    before = _tree(tmp_path)
    drv = DriverSubsystem(make_ctx(tmp_path, inv))
    await drv.start()
    assert drv.status().phase == Phase.FAILED
    assert drv.status().reason.startswith("driver root / holds only part of a driver: missing nvidia-smi")
    assert _tree(tmp_path) == before


async def test_toolkit_ready_follows_runtime_health(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    await DriverSubsystem(ctx).start()
    files = await _validation_files(ctx)
    assert not ctx.root.exists(TOOLKIT)
    stop = asyncio.Event()
    task = asyncio.create_task(files.run(stop))
    try:
        ctx.bus.publish(events.RUNTIME_HEALTHY, True)
        await until(lambda: ctx.root.exists(TOOLKIT))
        assert ctx.root.read_bytes(TOOLKIT) == b""
        ctx.bus.publish(events.RUNTIME_HEALTHY, False)
        await until(lambda: not ctx.root.exists(TOOLKIT))
        assert ctx.root.exists(READY)
    finally:
        stop.set()
        await task


async def test_driver_lost_unpublishes_and_removes_files(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    ctx = make_ctx(tmp_path, inv)
    sandbox.populate_sandbox(ctx.root, inv)
    ctx.bus.publish(events.RUNTIME_HEALTHY, True)
    drv = DriverSubsystem(ctx)
    await drv.start()
    await _validation_files(ctx)
    assert ctx.root.exists(TOOLKIT) and ctx.root.exists(READY)
    sandbox.write_kernel_state(ctx.root, inv, modules=())  # the modules went away
    (tmp_path / "sys/module/nvidia/initstate").unlink()
    await drv.reconcile()
    assert ctx.bus.last(events.DRIVER_READY) is None
    await _validation_files(ctx)
    assert not ctx.root.exists(READY) and not ctx.root.exists(TOOLKIT)
    assert ctx.registry.get_sample_value("nodeagent_driver_ready") == 0


async def test_helpers_on_an_nvswitch_system(tmp_path: Path) -> None:
    inv = sandbox.sandbox_inventory(1)
    ctx = make_ctx(tmp_path, inv)
    host_node(tmp_path, inv)
    sandbox.write_helper_process(ctx.root, 10, "nvidia-persistenced")
    ctx.root.write_atomic("/proc/driver/nvidia-nvswitch/devices/0000:05:00.0", b"")
    drv = DriverSubsystem(ctx)
    await drv.start()
    assert drv.status().reason == "nv-fabricmanager is not running"
    sandbox.write_helper_process(ctx.root, 11, "nv-fabricmanager")
    await drv.reconcile()
    assert drv.status().phase == Phase.RUNNING
    assert "nv-fabricmanager: running (pid 11)" in drv.status().details["helpers"]
