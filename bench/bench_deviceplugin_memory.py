"""Resident memory the device plugin adds to the whole agent (issue 21's goal: at most +4 MiB).

The simulated agent (``nodeagent run --simulate``, 8 GPUs, every subsystem) runs twice on the same sandbox:
once with ``deviceplugin.enabled = false`` and once with the plugin registered on a stand-in kubelet (another
process, ``nodeagent.testing.kubelet_plugins``) that keeps its ListAndWatch stream open. VmRSS is read once
/status shows the plugin registered (or, without it, the other subsystems running) and the agent has settled.

    .venv/bin/python bench/bench_deviceplugin_memory.py [--settle-s 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import PYTHON, REPO, rss_mib, table
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


def run_agent(root: Path, *, plugin: bool, settle_s: float) -> float:
    port = free_port()
    env = {
        **os.environ,
        "NODEAGENT_AGENT__LISTEN": f"127.0.0.1:{port}",
        "NODEAGENT_DEVICEPLUGIN__ENABLED": "true" if plugin else "false",
        "NODEAGENT_AGENT__LOG_LEVEL": "warning",
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
            if settled(doc) and (registered(doc) or not plugin):
                break
            time.sleep(0.2)
        else:
            raise SystemExit("the agent did not come up (or the plugin did not register) within 60 s")
        time.sleep(settle_s)
        return rss_mib(agent.pid)
    finally:
        agent.terminate()
        agent.wait(timeout=30)


def tables(settle_s: float = 5.0) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="dp-rss-") as tmp:
        root = Path(tmp) / "root"
        subprocess.run(
            [str(Path(PYTHON).with_name("nodeagent")), "plan", "--simulate", "--root", str(root)],
            check=True,
            capture_output=True,
            cwd=REPO,
        )  # lays out the sandbox (only an empty root is populated)
        kubelet = subprocess.Popen(
            [PYTHON, "-c", KUBELET, str(root / "var/lib/kubelet/device-plugins")],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        try:
            assert kubelet.stdout is not None
            kubelet.stdout.readline()
            without = run_agent(root, plugin=False, settle_s=settle_s)
            with_plugin = run_agent(root, plugin=True, settle_s=settle_s)
        finally:
            kubelet.terminate()
            kubelet.wait(timeout=10)
    return [
        table(
            "Device plugin: agent VmRSS (MiB), simulated 8 GPUs, every subsystem (goal: at most +4 MiB)",
            ["without", "with the plugin registered", "added"],
            [[f"{without:.1f}", f"{with_plugin:.1f}", f"{with_plugin - without:+.1f}"]],
        )
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle-s", type=float, default=5.0)
    args = parser.parse_args()
    for text in tables(args.settle_s):
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
