"""Resident memory and idle CPU the device plugin adds to the whole agent (issue 21's goals: at most +4 MiB,
idle CPU unchanged).

The simulated agent (``nodeagent run --simulate``, 8 GPUs, every subsystem) runs twice on the same sandbox:
once with ``deviceplugin.enabled = false`` and once with the plugin registered on a stand-in kubelet (another
process, ``nodeagent.testing.kubelet_plugins``) that keeps its ListAndWatch stream open. VmRSS is read once
/status shows the plugin registered (or, without it, the other subsystems running) and the agent has settled;
idle CPU is the agent's CPU time over the next ``--idle-s`` seconds (``NODEAGENT_BENCH_IDLE_S``) with nothing
asked of it.

    .venv/bin/python bench/bench_deviceplugin_memory.py [--settle-s 5] [--idle-s 30]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import PYTHON, REPO, cpu_ns, env_seconds, rss_mib, settle_idle_main, table
from tests.support import free_port

KUBELET = """
import asyncio, sys
from pathlib import Path
from nodeagent.testing.kubelet_plugins import KubeletDevicePlugins
async def main():
    k = KubeletDevicePlugins(Path(sys.argv[1]))
    await k.start()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def status(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as reply:
        data: dict[str, object] = json.loads(reply.read())
    return data


def registered(doc: dict[str, object]) -> bool:
    subsystems = doc.get("subsystems", {})
    dp = subsystems.get("deviceplugin", {}) if isinstance(subsystems, dict) else {}
    details = dp.get("details", {}) if isinstance(dp, dict) else {}
    resources = details.get("resources", {}) if isinstance(details, dict) else {}
    return any(r.get("registered") for r in resources.values()) if isinstance(resources, dict) else False


def settled(doc: dict[str, object]) -> bool:
    subsystems = doc.get("subsystems", {})
    if not isinstance(subsystems, dict) or not subsystems:
        return False
    return all(s.get("phase") not in ("pending", "starting") for s in subsystems.values())


def run_agent(root: Path, *, plugin: bool, settle_s: float, idle_s: float) -> tuple[float, float]:
    """(VmRSS MiB once settled, idle CPU % over ``idle_s`` after that)."""
    ready = registered if plugin else (lambda doc: True)
    return measure(root, {"NODEAGENT_DEVICEPLUGIN__ENABLED": str(plugin).lower()}, ready, settle_s, idle_s)


def measure(
    root: Path, settings: dict[str, str], ready: Callable[[dict[str, object]], bool], settle_s: float, idle_s: float
) -> tuple[float, float]:
    """The simulated agent with ``settings`` (environment overrides): (VmRSS MiB once /status shows every
    subsystem settled and ``ready``, then ``settle_s`` more; idle CPU % over the ``idle_s`` after that)."""
    port = free_port()
    env = {
        **os.environ,
        "NODEAGENT_AGENT__LISTEN": f"127.0.0.1:{port}",
        "NODEAGENT_AGENT__LOG_LEVEL": "warning",
        **settings,
    }
    agent = subprocess.Popen(
        [str(Path(PYTHON).with_name("nodeagent")), "run", "--simulate", "--root", str(root)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                doc = status(port)
            except OSError:
                time.sleep(0.2)
                continue
            if settled(doc) and ready(doc):
                break
            time.sleep(0.2)
        else:
            raise SystemExit(f"the agent did not come up (or get ready) within 60 s with {settings}")
        time.sleep(settle_s)
        rss = rss_mib(agent.pid)
        cpu0, t0 = cpu_ns(agent.pid), time.monotonic()
        time.sleep(idle_s)
        return rss, (cpu_ns(agent.pid) - cpu0) / 1e9 / (time.monotonic() - t0) * 100
    finally:
        agent.terminate()
        agent.wait(timeout=30)


def sandbox(root: Path) -> None:
    """Lays out the simulated sandbox (``nodeagent plan --simulate`` populates only an empty root)."""
    subprocess.run(
        [str(Path(PYTHON).with_name("nodeagent")), "plan", "--simulate", "--root", str(root)],
        check=True,
        capture_output=True,
        cwd=REPO,
    )


def tables(settle_s: float = 5.0, idle_s: float | None = None) -> list[str]:
    idle = env_seconds("NODEAGENT_BENCH_IDLE_S", 30.0) if idle_s is None else idle_s
    with tempfile.TemporaryDirectory(prefix="dp-rss-") as tmp:
        root = Path(tmp) / "root"
        sandbox(root)
        kubelet = subprocess.Popen(
            [PYTHON, "-c", KUBELET, str(root / "var/lib/kubelet/device-plugins")],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        try:
            assert kubelet.stdout is not None
            kubelet.stdout.readline()
            without, cpu_without = run_agent(root, plugin=False, settle_s=settle_s, idle_s=idle)
            with_plugin, cpu_with = run_agent(root, plugin=True, settle_s=settle_s, idle_s=idle)
        finally:
            kubelet.terminate()
            kubelet.wait(timeout=10)
    return [
        table(
            "Device plugin: agent VmRSS (MiB), simulated 8 GPUs, every subsystem (goal: at most +4 MiB)",
            ["without", "with the plugin registered", "added"],
            [[f"{without:.1f}", f"{with_plugin:.1f}", f"{with_plugin - without:+.1f}"]],
        ),
        table(
            f"Device plugin: agent idle CPU (% of one core over {idle:.0f} s after settling; goal: unchanged)",
            ["without", "with the plugin registered", "added"],
            [[f"{cpu_without:.3f}", f"{cpu_with:.3f}", f"{cpu_with - cpu_without:+.3f}"]],
        ),
    ]


if __name__ == "__main__":
    raise SystemExit(settle_idle_main(__doc__ or "", tables))
