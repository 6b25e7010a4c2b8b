"""The subsystem around the engines: bad input, validation, rollback, health events, revert, drift."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nodeagent import events
from nodeagent.errors import PermanentError
from nodeagent.subsystem import Phase

from .conftest import fixture

CONFIG = "/etc/containerd/config.toml"
V16 = fixture("containerd-1.6.20-default.toml")


async def plan_of(node: Any) -> Any:
    return node.sub.plan(await node.sub.observe())


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("path", "data", "where"),
    [
        (CONFIG, b"version = 2\n[plugins\n  x = 1\n", f"{CONFIG}:2"),
        (CONFIG, b'version = 2\n\n[grpc]\naddress = "/run/x.sock"\naddress = "/run/y.sock"\n', f"{CONFIG}:5"),
        (CONFIG, b"version = 2\nroot = \xff\xfe\n", f"{CONFIG}:2"),
        ("/etc/docker/daemon.json", b'{\n  "log-driver": "json-file",\n  "runtimes": {\n}', "daemon.json:4"),
        ("/etc/docker/daemon.json", b'{\n  "a": 1,\n  "b": \n}\n', "daemon.json:4"),
        ("/etc/crio/crio.conf", b"[crio.runtime]\ndefault_runtime = runc\n", "crio.conf:2"),
    ],
    ids=["toml-syntax", "toml-duplicate-key", "not-utf8", "json-unterminated", "json-missing-value", "crio-bare-word"],
)
async def test_malformed_files_fail_with_file_and_line_and_write_nothing(
    node_factory: Any, path: str, data: bytes, where: str
) -> None:
    node = node_factory({path: data})
    before = node.snapshot()
    plan = await plan_of(node)
    assert where in plan.error, plan.error
    assert not plan.steps
    with pytest.raises(PermanentError):
        await node.sub.apply(plan)
    assert node.sub.status().phase == Phase.FAILED
    assert where in node.sub.status().reason
    assert node.snapshot() == before
    assert not node.control.restarts


async def test_config_path_that_is_a_directory(node_factory: Any) -> None:
    node = node_factory(engine="containerd")
    node.root.resolve(CONFIG).mkdir(parents=True)
    plan = await plan_of(node)
    assert CONFIG in plan.error and "directory" in plan.error
    await node.sub.reconcile("start")
    assert node.sub.status().phase == Phase.FAILED
    assert node.ctx.bus.last(events.RUNTIME_HEALTHY) is False


async def test_symlink_escaping_the_root_is_refused(node_factory: Any, tmp_path: Any) -> None:
    outside = tmp_path / "outside.toml"
    outside.write_bytes(V16)
    node = node_factory(engine="containerd")
    link = node.root.resolve("/etc/containerd")
    link.mkdir(parents=True)
    (link / "config.toml").symlink_to("../../../../outside.toml")
    plan = await plan_of(node)
    assert "climbs above the root" in plan.error and CONFIG in plan.error
    assert outside.read_bytes() == V16


async def test_unparseable_k3s_template_names_the_line(node_factory: Any) -> None:
    k3s = "/var/lib/rancher/k3s/agent/etc/containerd"
    node = node_factory(
        {
            f"{k3s}/config.toml": fixture("k3s/config.toml"),
            f"{k3s}/config.toml.tmpl": fixture("k3s/config-full.toml.tmpl"),
        }
    )
    before = node.snapshot()
    plan = await plan_of(node)
    assert f"{k3s}/config.toml.tmpl:4" in plan.error and "Go template directive" in plan.error
    assert node.snapshot() == before


async def test_dropin_shadowed_by_a_later_file_is_refused(node_factory: Any) -> None:
    main = V16.replace(b"imports = []", b'imports = ["/etc/containerd/conf.d/*.toml"]')
    later = (
        b'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n'
        b'runtime_type = "io.containerd.runc.v2"\n'
    )
    node = node_factory({CONFIG: main, "/etc/containerd/conf.d/zz-site.toml": later}, containerd_version="1.6.20")
    plan = await plan_of(node)
    assert "refusing to write" in plan.error and "zz-site.toml" in plan.error


# ------------------------------------------------------------------------------- validation, rollback


async def test_validation_failure_restores_and_never_restarts(node_factory: Any) -> None:
    node = node_factory({CONFIG: V16})
    node.control.validation_error = "containerd: failed to load TOML: (1, 1): unexpected token"
    plan = await plan_of(node)
    with pytest.raises(PermanentError, match="rejected the new config"):
        await node.sub.apply(plan)
    assert node.read(CONFIG) == V16
    assert not node.control.restarts
    assert "unexpected token" in node.sub.status().reason


async def test_unhealthy_after_restart_rolls_back_and_reports_the_runtimes_error(node_factory: Any) -> None:
    node = node_factory({CONFIG: V16}, health_timeout_s=0.3)
    node.control.healthy = False
    plan = await plan_of(node)
    with pytest.raises(PermanentError) as info:
        await node.sub.apply(plan)
    assert "not healthy after restart" in str(info.value) and "simulated failure" in str(info.value)
    assert node.read(CONFIG) == V16
    assert len(node.control.restarts) == 2  # the change, then back to the old files
    assert node.sub.status().phase == Phase.FAILED
    assert node.ctx.bus.last(events.RUNTIME_HEALTHY) is False


async def test_plan_made_stale_by_a_concurrent_edit_is_not_applied(node_factory: Any) -> None:
    node = node_factory({CONFIG: V16})
    plan = await plan_of(node)
    node.write(CONFIG, V16 + b"\n# edited meanwhile\n")
    with pytest.raises(PermanentError, match="changed since the plan"):
        await node.sub.apply(plan)
    assert node.read(CONFIG) == V16 + b"\n# edited meanwhile\n"


async def test_restart_none_writes_but_does_not_restart(node_factory: Any) -> None:
    node = node_factory({CONFIG: V16}, restart="none")
    plan = await plan_of(node)
    assert any("restart = none" in w for w in plan.warnings)
    await node.sub.apply(plan)
    assert not node.control.restarts


async def test_signal_mode_on_containerd_warns(node_factory: Any) -> None:
    node = node_factory({CONFIG: V16}, restart="signal")
    plan = await plan_of(node)
    assert any("exits on SIGHUP" in w for w in plan.warnings)
    assert plan.steps[-1].disruption == "restart"


async def test_restart_command_is_used(node_factory: Any) -> None:
    node = node_factory({CONFIG: V16}, restart_command=["/usr/local/bin/restart-ctd", "--now"])
    plan = await plan_of(node)
    step = plan.steps[-1]
    assert "/usr/local/bin/restart-ctd --now" in step.summary
    await node.sub.apply(plan)
    assert node.control.restarts[0][1] == "command"


# ------------------------------------------------------------------------------------- CRI-O and docker


async def test_crio_set_as_default_only_when_asked(node_factory: Any) -> None:
    node = node_factory({"/etc/crio/crio.conf": fixture("crio/crio.conf")}, set_as_default=True)
    plan = await plan_of(node)
    await node.sub.apply(plan)
    assert b'default_runtime = "nvidia"' in node.read("/etc/crio/crio.conf.d/99-nvidia.conf")
    assert node.control.restarts[0][1] == "signal"  # SIGHUP reload


async def test_docker_cdi_and_default(node_factory: Any) -> None:
    path = "/etc/docker/daemon.json"
    node = node_factory({path: fixture("docker/daemon-2space.json")}, set_as_default=True, enable_cdi=True)
    await node.sub.apply(await plan_of(node))
    text = node.read(path).decode()
    assert '"default-runtime": "nvidia"' in text and '"cdi": true' in text
    assert '"x-site-note": "café"' in text


# ------------------------------------------------------------------------------ health, revert, drift


async def test_reconcile_publishes_health_and_is_idempotent(node_factory: Any) -> None:
    node = node_factory({CONFIG: V16})
    await node.sub.reconcile("start")
    assert node.ctx.bus.last(events.RUNTIME_HEALTHY) is True
    after = node.snapshot()
    for _ in range(5):
        plan = await node.sub.reconcile("poll")
        assert plan.empty
    assert node.snapshot() == after
    assert len(node.control.restarts) == 1
    assert node.sub.status().phase == Phase.RUNNING


async def test_revert_without_changes_does_not_restart(node_factory: Any) -> None:
    node = node_factory({CONFIG: V16})
    with pytest.raises(PermanentError, match="no backup journal"):
        await node.sub.revert()  # never applied: a named error, not "restored nothing"
    await node.sub.apply(await plan_of(node))
    await node.sub.revert()
    restarts = len(node.control.restarts)
    result = await node.sub.revert()
    assert result.changed == () and len(node.control.restarts) == restarts


async def test_revert_after_agent_restart_uses_the_journal(node_factory: Any, tmp_path: Any) -> None:
    from nodeagent.runtime.subsystem import RuntimeSubsystem

    node = node_factory({CONFIG: V16})
    await node.sub.apply(await plan_of(node))
    fresh = RuntimeSubsystem(node.ctx, control=node.control)  # a new process reading the same journal
    await fresh.revert()
    assert node.read(CONFIG) == V16


async def _wait_for(predicate: Any, timeout_s: float) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > timeout_s:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
    return loop.time() - start


@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "poll"])
async def test_drift_is_repaired_within_two_seconds(node_factory: Any, inotify: bool, monkeypatch: Any) -> None:
    import nodeagent.backends.watch as watch

    if not inotify:
        monkeypatch.setattr(watch.FileWatcher, "_open_inotify", lambda self: None)
    node = node_factory({CONFIG: V16}, watch_poll_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(node.sub.run(stop))
    try:
        # the first apply is done once its restart is recorded (the file is written before the restart)
        await _wait_for(lambda: b"nvidia" in (node.read(CONFIG) or b"") and len(node.control.restarts) == 1, 5)
        writes_before = len(node.control.restarts)
        # something rewrites the file without the runtime (a package upgrade, a k8s upgrade)
        tmp = node.root.resolve(CONFIG + ".new")
        tmp.write_bytes(V16)
        tmp.replace(node.root.resolve(CONFIG))
        took = await _wait_for(lambda: b"nvidia" in (node.read(CONFIG) or b""), 2.0)
        assert took < 2.0
        await _wait_for(lambda: len(node.control.restarts) == writes_before + 1, 2.0)  # the restart follows the write
        # an unrelated rewrite that keeps the runtime: no write, no restart
        settled = node.read(CONFIG)
        node.root.resolve(CONFIG).write_bytes(settled)
        await asyncio.sleep(0.5)
        assert node.read(CONFIG) == settled
        assert len(node.control.restarts) == writes_before + 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_no_runtime_found_fails_clearly(node_factory: Any) -> None:
    node = node_factory()
    plan = await plan_of(node)
    assert "no container runtime found" in plan.error


async def test_set_as_default_records_the_previous_default(node_factory: Any) -> None:
    node = node_factory({CONFIG: V16}, set_as_default=True)
    plan = await plan_of(node)
    assert any("default runtime 'runc' -> 'nvidia'" in e for e in plan.evidence)
    await node.sub.apply(plan)
    await node.sub.revert()
    assert b'default_runtime_name = "runc"' in node.read(CONFIG)


async def test_config_source_command_copies_options_from_the_dump(node_factory: Any) -> None:
    from nodeagent.backends.runtimectl import Target

    dump = V16.replace(b"SystemdCgroup = false", b"SystemdCgroup = true")

    class Dumping(type(node_factory().control)):  # type: ignore[misc]
        async def dump_config(self, target: Target) -> bytes:
            return dump

    node = node_factory({CONFIG: V16}, config_source="command")
    node.sub.control = Dumping()
    plan = await plan_of(node)
    assert any("config dump" in e for e in plan.evidence)
    new = plan.steps[0].payload.new.decode()
    nvidia = new[new.index("runtimes.nvidia.options]") :]
    assert "SystemdCgroup = true" in nvidia.split("\n\n")[0]
    # the file's own runc is untouched, and the file's version (2) decides where the runtime goes
    assert new.count("SystemdCgroup = false") == 1


async def test_config_source_command_failure_is_a_clear_error(node_factory: Any) -> None:
    node = node_factory({CONFIG: V16}, config_source="command")
    plan = await plan_of(node)
    assert "containerd config dump" in plan.error


async def test_stopping_the_agent_never_reverts(node_factory: Any) -> None:
    node = node_factory({CONFIG: V16})
    stop = asyncio.Event()
    task = asyncio.create_task(node.sub.run(stop))
    await _wait_for(lambda: b"runtimes.nvidia" in (node.read(CONFIG) or b""), 5)
    applied = node.read(CONFIG)
    stop.set()
    await asyncio.wait_for(task, 5)
    await node.sub.stop()
    assert node.read(CONFIG) == applied
    assert len(node.control.restarts) == 1
