"""Resident memory and idle CPU the DRA plugin adds to the whole agent (issue 22's goal: at most +3 MiB beyond
the device plugin).

The simulated agent (``nodeagent run --simulate``, 8 GPUs, every other subsystem) runs three times on one
sandbox, beside two stand-in kubelets in their own processes (``nodeagent.testing.kubelet_plugins`` for the
device plugin, ``nodeagent.testing.kubelet_dra`` for DRA's plugin watcher): the device plugin only
(``dra.enabled = false``), DRA only (``deviceplugin.enabled = false``), and neither. VmRSS is read once /status
shows the plugin registered (or, with neither, the other subsystems running) and the agent has settled; idle
CPU is the agent's CPU time over the next ``--idle-s`` seconds (``NODEAGENT_BENCH_IDLE_S``).

Without Kubernetes configured the DRA plugin is registered with the kubelet and serves both sockets, its 8
devices planned, but publishes no ResourceSlices (phase degraded: "no ResourceSlices without Kubernetes") and
prepares no claims: the figure is what it holds registered and idle, not with claims prepared.

    .venv/bin/python bench/bench_dra_memory.py [--settle-s 5] [--idle-s 30]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import PYTHON, REPO, env_seconds, settle_idle_main, table
from bench.bench_deviceplugin_memory import measure, registered, sandbox

RUNS = (
    ("device plugin only", {"NODEAGENT_DEVICEPLUGIN__ENABLED": "true", "NODEAGENT_DRA__ENABLED": "false"}),
    ("DRA only", {"NODEAGENT_DEVICEPLUGIN__ENABLED": "false", "NODEAGENT_DRA__ENABLED": "true"}),
    ("neither", {"NODEAGENT_DEVICEPLUGIN__ENABLED": "false", "NODEAGENT_DRA__ENABLED": "false"}),
)


def dra_registered(doc: dict[str, object]) -> bool:
    subsystems = doc.get("subsystems", {})
    dra = subsystems.get("dra", {}) if isinstance(subsystems, dict) else {}
    details = dra.get("details", {}) if isinstance(dra, dict) else {}
    return isinstance(details, dict) and details.get("registered") is True and bool(details.get("devices"))


def dra_state(doc: dict[str, object]) -> str:
    """The DRA subsystem's phase and reason on /status (what state the memory was read in)."""
    subsystems = doc.get("subsystems", {})
    dra = subsystems.get("dra", {}) if isinstance(subsystems, dict) else {}
    if not isinstance(dra, dict):
        return "absent"
    details = dra.get("details", {})
    devices = len(details.get("devices", [])) if isinstance(details, dict) else 0
    return f"{dra.get('phase')}, registered, {devices} devices: {dra.get('reason', '')}"


def _ready(settings: dict[str, str], seen: list[str]) -> Callable[[dict[str, object]], bool]:
    if settings["NODEAGENT_DRA__ENABLED"] == "true":

        def ready(doc: dict[str, object]) -> bool:
            seen[:] = [dra_state(doc)]
            return dra_registered(doc)

        return ready
    if settings["NODEAGENT_DEVICEPLUGIN__ENABLED"] == "true":
        return registered
    return lambda doc: True


def _kubelet(*args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([PYTHON, "-m", *args], stdout=subprocess.PIPE, cwd=REPO)
    assert proc.stdout is not None
    proc.stdout.readline()  # its first line: listening
    return proc


def tables(settle_s: float = 5.0, idle_s: float | None = None) -> list[str]:
    idle = env_seconds("NODEAGENT_BENCH_IDLE_S", 30.0) if idle_s is None else idle_s
    got: dict[str, tuple[float, float]] = {}
    state: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dra-rss-") as tmp:
        root = Path(tmp) / "root"
        sandbox(root)
        kubelets = [
            _kubelet("nodeagent.testing.kubelet_plugins", str(root / "var/lib/kubelet/device-plugins")),
            _kubelet("nodeagent.testing.kubelet_dra", str(root)),
        ]
        try:
            for name, settings in RUNS:
                got[name] = measure(root, settings, _ready(settings, state), settle_s, idle)
        finally:
            for proc in kubelets:
                proc.terminate()
                proc.wait(timeout=10)
    (dp, dp_cpu), (dra, dra_cpu), (none, none_cpu) = (got[name] for name, _ in RUNS)
    return [
        table(
            "DRA plugin: agent VmRSS (MiB) and idle CPU (% of one core over "
            f"{idle:.0f} s after settling), simulated 8 GPUs (goal: DRA at most +3 MiB beyond the device plugin)",
            ["run", "VmRSS", "vs neither", "idle CPU", "vs neither"],
            [
                [name, f"{rss:.1f}", f"{rss - none:+.1f}", f"{cpu:.3f}", f"{cpu - none_cpu:+.3f}"]
                for name, (rss, cpu) in got.items()
            ],
        ),
        table(
            "DRA plugin against the device plugin (DRA only minus device plugin only)",
            ["VmRSS (MiB)", "idle CPU (%)"],
            [[f"{dra - dp:+.1f}", f"{dra_cpu - dp_cpu:+.3f}"]],
        )
        + f"\n\nDRA plugin's state when read: {state[0] if state else 'unknown'}",
    ]


if __name__ == "__main__":
    raise SystemExit(settle_idle_main(__doc__ or "", tables))
