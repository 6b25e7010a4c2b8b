"""Real containerd and dockerd for the runtime integration tests, each in its own temporary root.

Every daemon gets a short temporary directory that is also the agent's Root: its config, root, state,
sockets, pid file and log live there, so nothing touches the machine's /etc, /run or system daemons
(containerd 1.6 itself still puts shim sockets under /run/containerd/s, named by a hash of our socket
path). Daemons are started and restarted through a small script (the test's restart command, injected
with the runtime.restart_command setting, because they are not under systemd), and stopped by the pid
in their pid file in teardown.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nodeagent import testing
from nodeagent.backends.hostfs import Root
from nodeagent.backends.runtimectl import HostRuntimeControl
from nodeagent.runtime.subsystem import RuntimeSubsystem
from nodeagent.settings import Settings, replace
from tests.support import require, wait_until

sys.path.insert(0, str(Path(__file__).parent / "cri"))

REPO = Path(__file__).parents[2]
CONTAINERD_DEFAULT = REPO / "nodeagent/backends/sim/data/containerd-1.6.20-default.toml"
PAUSE_IMAGE = "localhost/nodeagent/pause:test"
PAUSE_C = """#include <signal.h>
#include <unistd.h>
static void done(int sig) { (void)sig; _exit(0); }
int main(void) { signal(SIGTERM, done); signal(SIGINT, done); for (;;) pause(); }
"""

RESTART_SCRIPT = """#!/bin/sh
# Restart command injected into the agent: stop the test daemon by its pid, start it again, detached.
pid=$(cat {pidfile} 2>/dev/null)
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
fi
setsid {binary} --config {config} >> {log} 2>&1 < /dev/null &
echo $! > {pidfile}
"""


def need_root_and(*binaries: str) -> None:
    require(os.geteuid() == 0, "needs root (real container runtime daemons)")
    for b in binaries:
        require(shutil.which(b) is not None, f"{b} is not installed")


def short_tmpdir() -> Path:
    """unix socket paths must stay under 108 bytes, so daemons live in /tmp/na-XXXX, not pytest's tmp."""
    return Path(tempfile.mkdtemp(prefix="na-", dir="/tmp"))


def containerd_config(base: Path, socket_host_path: str, *, imports: str = "") -> str:
    """The real containerd 1.6.20 default config, with every host path moved into ``base``."""
    text = CONTAINERD_DEFAULT.read_text()
    sock = f"{base}{socket_host_path}"
    swaps = {
        'root = "/var/lib/containerd"': f'root = "{base}/var/lib/containerd"',
        'state = "/run/containerd"': f'state = "{base}/run/containerd"',
        'address = "/run/containerd/containerd.sock"': f'address = "{sock}"',
        'path = "/opt/containerd"': f'path = "{base}/opt/containerd"',
        'sandbox_image = "registry.k8s.io/pause:3.6"': f'sandbox_image = "{PAUSE_IMAGE}"',
        'bin_dir = "/opt/cni/bin"': f'bin_dir = "{base}/opt/cni/bin"',
        'conf_dir = "/etc/cni/net.d"': f'conf_dir = "{base}/etc/cni/net.d"',
        '[ttrpc]\n  address = ""': f'[ttrpc]\n  address = "{sock}.ttrpc"',
        # the sandbox's oom_score_adj of -998 needs CAP_SYS_RESOURCE, which test machines may not grant
        "restrict_oom_score_adj = false": "restrict_oom_score_adj = true",
    }
    for old, new in swaps.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    if imports:
        text = text.replace("imports = []", f"imports = {imports}", 1)
    return text


def left_by_agent(case: Path, root: Path) -> None:
    """A golden case's node as the agent leaves it under ``root``: its input files, then its expected ones."""
    for tree in (case / "input", case / "expected"):
        for src in tree.rglob("*"):
            if src.is_file():
                dst = root / src.relative_to(tree)
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(src.read_bytes())


@dataclass
class Daemon:
    """One test daemon: its temporary root and the files that drive it."""

    base: Path
    binary: str
    config_host: str
    socket_host: str

    @property
    def root(self) -> Root:
        return Root(self.base)

    @property
    def config(self) -> Path:
        return self.base / self.config_host.lstrip("/")

    @property
    def sock(self) -> Path:
        return self.base / self.socket_host.lstrip("/")

    @property
    def pidfile(self) -> Path:
        return self.base / "daemon.pid"

    @property
    def log_host(self) -> str:
        return "/var/log/daemon.log"

    @property
    def log(self) -> Path:
        return self.base / self.log_host.lstrip("/")

    @property
    def restart_script(self) -> Path:
        return self.base / "restart-daemon.sh"

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def write_restart_script(self, binary_args: str = "") -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        text = RESTART_SCRIPT.format(pidfile=self.pidfile, binary=self.binary, config=self.config, log=self.log)
        if binary_args:
            text = text.replace(f"--config {self.config}", binary_args)
        self.restart_script.write_text(text)
        self.restart_script.chmod(0o755)

    def start(self) -> None:
        subprocess.run([str(self.restart_script)], check=True, timeout=30)

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class Containerd(Daemon):
    def ctr(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.sock), *args], capture_output=True, text=True, check=check, timeout=timeout
        )

    def cri_status(self) -> str | None:
        if not self.sock.exists():
            return None
        done = self.ctr("plugins", "ls", check=False, timeout=10)
        for line in done.stdout.splitlines():
            cols = line.split()
            if len(cols) >= 4 and cols[:2] == ["io.containerd.grpc.v1", "cri"]:
                return cols[-1]
        return None

    def wait_cri_ok(self, timeout_s: float = 30) -> None:
        wait_until(
            lambda: self.cri_status() == "ok",
            timeout_s=timeout_s,
            what=f"containerd CRI plugin ok\n{self.log_text()[-3000:]}",
        )

    def dump(self) -> str:
        done = subprocess.run(
            [self.binary, "--config", str(self.config), "config", "dump"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def cleanup_shims(self) -> None:
        """Kill what our sandboxes left behind (shims serving our socket, and their children) and unmount."""
        ours = [pid for pid, args in _processes() if str(self.sock) in args and "containerd-shim" in args]
        children = [pid for pid, _ in _processes() if _ppid(pid) in ours]
        for pid in children + ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        unmount_under(self.base)


def _processes() -> list[tuple[int, str]]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                out.append(
                    (int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
                )
    return out


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def unmount_under(base: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for target in sorted((m for m in mounts if m.startswith(str(base) + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)


def remove_tree(base: Path) -> None:
    unmount_under(base)
    shutil.rmtree(base, ignore_errors=True)


# ----------------------------------------------------------------------------------- pause image


def _blob(layout: dict[str, bytes], data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    layout[f"blobs/sha256/{digest.split(':')[1]}"] = data
    return {"digest": digest, "size": len(data)}


def build_pause_archive(workdir: Path) -> Path:
    """A one-file OCI image (a static C 'pause' compiled here), as an oci-archive ctr can import."""
    return build_static_image(workdir, PAUSE_C, "pause", PAUSE_IMAGE)


def build_static_image(workdir: Path, source: str, name: str, image: str) -> Path:
    """A one-file OCI image ``image`` whose entrypoint is ``/<name>``, the C ``source`` compiled static here,
    as an oci-archive (``<workdir>/<name>.oci.tar``) that ctr can import."""
    src = workdir / f"{name}.c"
    src.write_text(source)
    binary = workdir / name
    subprocess.run(["gcc", "-static", "-Os", "-o", str(binary), str(src)], check=True, capture_output=True)
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        data = binary.read_bytes()
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        tar.addfile(info, io.BytesIO(data))
    layer = layer_buf.getvalue()
    blobs: dict[str, bytes] = {}
    layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar", **_blob(blobs, layer)}
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": [f"/{name}"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json", **_blob(blobs, json.dumps(config).encode())}
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    }
    manifest_desc = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **_blob(blobs, json.dumps(manifest).encode()),
    }
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    manifest_desc["annotations"] = {
        "io.containerd.image.name": image,
        "org.opencontainers.image.ref.name": image.rsplit(":", 1)[-1],
    }
    blobs["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}).encode()
    blobs["oci-layout"] = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
    archive = workdir / f"{name}.oci.tar"
    with tarfile.open(archive, "w") as tar:
        for member, data in blobs.items():
            info = tarfile.TarInfo(member)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return archive


@pytest.fixture(scope="session")
def pause_archive() -> Iterator[Path]:
    need_root_and("containerd", "ctr", "runc", "gcc")
    work = short_tmpdir()
    try:
        yield build_pause_archive(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture
def containerd_factory() -> Iterator[Any]:
    """Start containerd daemons in fresh temporary roots; every one is stopped and removed afterwards."""
    need_root_and("containerd", "ctr", "runc")
    started: list[Containerd] = []

    def make(
        *,
        config_host: str = "/etc/containerd/config.toml",
        socket_host: str = "/run/containerd/containerd.sock",
        imports: str = "",
        start: bool = True,
    ) -> Containerd:
        d = Containerd(short_tmpdir(), shutil.which("containerd") or "containerd", config_host, socket_host)
        started.append(d)
        d.config.parent.mkdir(parents=True, exist_ok=True)
        d.config.write_text(containerd_config(d.base, socket_host, imports=imports))
        d.write_restart_script()
        if start:
            d.start()
            d.wait_cri_ok()
        return d

    yield make
    for d in started:
        d.stop()
        d.cleanup_shims()
        remove_tree(d.base)


def agent(daemon: Daemon, **runtime: Any) -> RuntimeSubsystem:
    """The runtime subsystem on the daemon's temporary root, restarting it with the test's script."""
    values: dict[str, Any] = {
        "socket": daemon.socket_host,
        "restart_command": [str(daemon.restart_script)],
        "log_path": daemon.log_host,
        "health_timeout_s": 20.0,
    }
    poll_s = runtime.pop("watch_poll_s", None)
    settings = replace(Settings(), "runtime", **{**values, **runtime})
    if poll_s is not None:
        settings = replace(settings, "watch", poll_s=poll_s)
    root = daemon.root
    ctx = testing.context(root, settings, runtime_control=HostRuntimeControl(root), node_name="it-node")
    return RuntimeSubsystem(ctx)


def write_shim(base: Path) -> tuple[Path, Path]:
    """A runtime binary that records each call and execs runc (what the nvidia runtime would wrap)."""
    shim = base / "bin/nvidia-container-runtime"
    calls = base / "shim-calls.log"
    shim.parent.mkdir(parents=True, exist_ok=True)
    shim.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec runc "$@"\n')
    shim.chmod(0o755)
    return shim, calls
