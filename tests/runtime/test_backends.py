"""The runtime's host backends without real daemons: file watching, socket peers, output parsing."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import pytest

from nodeagent.backends.hostfs import Root
from nodeagent.backends.runtimectl import (
    HostRuntimeControl,
    Target,
    cri_plugin_status,
    error_lines,
    parse_version,
    peer_pid,
)
from nodeagent.backends.watch import FileWatcher
from tests.support import until

CTR_OK = """TYPE                                  ID                       PLATFORMS      STATUS
io.containerd.content.v1              content                  -              ok
io.containerd.grpc.v1                 cri                      linux/amd64    ok
"""


def test_parse_version() -> None:
    assert parse_version("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3") == "1.6.20"
    assert parse_version("containerd github.com/k3s-io/containerd v1.7.23-k3s2 abc") == "1.7.23"
    assert parse_version("containerd containerd.io v2.0.4 1a43cb6a") == "2.0.4"
    assert parse_version("garbage") == ""


def test_cri_plugin_status() -> None:
    assert cri_plugin_status(CTR_OK) == "ok"
    assert cri_plugin_status(CTR_OK.replace("linux/amd64    ok", "linux/amd64    error")) == "error"
    assert cri_plugin_status("TYPE ID PLATFORMS STATUS\n") is None


def test_error_lines_keep_the_daemons_own_words() -> None:
    log = (
        'time="x" level=info msg="starting containerd"\n'
        'time="x" level=warning msg="failed to load plugin io.containerd.grpc.v1.cri" error="invalid plugin config: '
        "no corresponding runtime configured in `containerd.runtimes` for `containerd` "
        '`default_runtime_name = \\"runc\\"`"\n'
    )
    assert "no corresponding runtime configured" in error_lines(log)
    assert "starting containerd" not in error_lines(log)


def test_peer_pid_of_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    try:
        assert peer_pid(path) == os.getpid()
    finally:
        server.close()
    assert peer_pid(path) is None
    assert peer_pid(tmp_path / "absent.sock") is None


async def test_health_and_command_restart_through_fake_tools(tmp_path: Path) -> None:
    root = Root(tmp_path)
    sock = tmp_path / "run/containerd.sock"
    sock.parent.mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock))
    server.listen(4)
    ctr = tmp_path / "ctr"
    ctr.write_text(f"#!/bin/sh\ncat <<'EOF'\n{CTR_OK}EOF\n")
    ctr.chmod(ctr.stat().st_mode | stat.S_IEXEC)
    marker = tmp_path / "restarted"
    target = Target(
        "containerd",
        "/run/containerd.sock",
        "/etc/containerd/config.toml",
        restart="command",
        restart_command=("/bin/sh", "-c", f"echo done > {marker}"),
    )
    control = HostRuntimeControl(root, ctr=str(ctr))
    try:
        health = await control.health(target)
        assert health.ok and health.pid == os.getpid()
        await control.restart(target)
        assert marker.read_text() == "done\n"
        ctr.write_text(f"#!/bin/sh\ncat <<'EOF'\n{CTR_OK.replace('linux/amd64    ok', 'linux/amd64    error')}EOF\n")
        health = await control.health(target)
        assert not health.ok and "error" in health.reason
    finally:
        server.close()
    assert not (await control.health(target)).ok


async def _changes(watcher: FileWatcher, stop: asyncio.Event, out: list[set[Path]]) -> None:
    async for changed in watcher.changes(stop):
        out.append(changed)


@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "poll"])
async def test_file_watcher_sees_rename_and_rewrite(tmp_path: Path, inotify: bool) -> None:
    watched = tmp_path / "etc/config.toml"
    watched.parent.mkdir()
    watched.write_text("a")
    other = tmp_path / "etc/other.toml"
    watcher = FileWatcher([watched], poll_s=0.05, use_inotify=inotify)
    stop = asyncio.Event()
    seen: list[set[Path]] = []
    task = asyncio.create_task(_changes(watcher, stop, seen))
    try:
        await asyncio.sleep(0.1)
        assert watcher.mode == ("inotify" if inotify else "poll")
        other.write_text("ignored")
        tmp = tmp_path / "etc/.config.toml.tmp"
        tmp.write_text("bb")
        tmp.replace(watched)
        await until(lambda: seen, "the watch to report", timeout_s=2)
        assert seen[0] == {watched}
        seen.clear()
        watched.write_text("ccc")
        await until(lambda: seen, "the watch to report", timeout_s=2)
        assert seen[0] == {watched}
    finally:
        stop.set()
        await asyncio.wait_for(task, 2)


async def test_file_watcher_polls_a_directory_that_does_not_exist_yet(tmp_path: Path) -> None:
    watched = tmp_path / "later/dropin.toml"
    watcher = FileWatcher([watched], poll_s=0.05)
    stop = asyncio.Event()
    seen: list[set[Path]] = []
    task = asyncio.create_task(_changes(watcher, stop, seen))
    try:
        await asyncio.sleep(0.1)
        watched.parent.mkdir()
        watched.write_text("x")
        await until(lambda: seen, "the watch to report", timeout_s=2)
        assert seen[0] == {watched}
    finally:
        stop.set()
        await asyncio.wait_for(task, 2)
