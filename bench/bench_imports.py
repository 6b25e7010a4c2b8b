"""Import budget per dependency (issue 15, goal 5): what each runtime dependency adds to a fresh
process, in the order the agent loads them (a module shared by two is counted for the first), in the
runtime-only venv and, for comparison, in the test venv (where ``rich`` rides along with structlog).
The last row, ``nodeagent (whole agent)``, is the agent's own modules on top."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import runtime_venv
from bench._common import table

ORDER = (
    ("python + site", ""),
    ("asyncio", "asyncio"),
    ("ssl", "ssl"),
    ("structlog", "structlog"),
    ("PyYAML", "yaml"),
    ("tomlkit", "tomlkit"),
    ("prometheus_client", "prometheus_client"),
    ("aiohttp (with aiohttp.web)", "aiohttp.web"),
    ("asyncinotify", "asyncinotify"),
    ("pynvml (nvidia-ml-py)", "pynvml"),
    ("pyudev", "pyudev"),
    ("grpclib + protobuf", "grpclib.client"),
    ("nodeagent (whole agent)", "nodeagent.app,nodeagent.compose,nodeagent.cli,nodeagent.subsystem_table"),
)

PROBE = """
import importlib, json, sys, time, gc
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
out = [("python + site", rss(), 0.0)]
for label, names in json.loads(sys.argv[1])[1:]:
    before, t0 = rss(), time.perf_counter()
    try:
        for name in names.split(','):
            importlib.import_module(name)
    except ImportError as err:
        out.append((label, float('nan'), float('nan')))
        continue
    gc.collect()
    out.append((label, rss() - before, (time.perf_counter() - t0) * 1000))
out.append(("rich loaded", float('rich' in sys.modules), 0.0))
out.append(("total", rss(), 0.0))
print(json.dumps(out))
"""


def budget(py: Path) -> list[tuple[str, float, float]]:
    runs = []
    for _ in range(3):  # median of 3 fresh processes
        text = subprocess.run(
            [str(py), "-c", PROBE, json.dumps(ORDER)], capture_output=True, text=True, check=True, cwd="/"
        ).stdout
        runs.append(json.loads(text))
    rows = []
    for i, (label, _, _) in enumerate(runs[0]):
        rss = sorted(r[i][1] for r in runs)[1]
        ms = sorted(r[i][2] for r in runs)[1]
        rows.append((label, rss, ms))
    return rows


def main() -> list[str]:
    runtime, where = runtime_venv.python()
    prod = budget(runtime)
    test = budget(Path(sys.executable))
    rows: list[list[object]] = []
    for (label, mib, ms), (_, t_mib, t_ms) in zip(prod[:-2], test[:-2], strict=True):
        rows.append(
            [label, f"{mib:.1f}", f"{ms:.0f}" if label != "python + site" else "", f"{t_mib:.1f}", f"{t_ms:.0f}"]
        )
    rows.append(["rich imported", "yes" if prod[-2][1] else "no", "", "yes" if test[-2][1] else "no", ""])
    rows.append(["RSS after all imports", f"{prod[-1][1]:.1f}", "", f"{test[-1][1]:.1f}", ""])
    return [
        table(
            f"Import budget per dependency (MiB RSS, ms; median of 3 fresh processes); production: {where}",
            ["dependency (in load order)", "prod MiB", "prod ms", "test venv MiB", "test venv ms"],
            rows,
        )
    ]


if __name__ == "__main__":
    for t in main():
        print(t)
