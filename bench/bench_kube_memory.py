"""Resident memory a Kubernetes client adds to the agent: the thin aiohttp client (nodeagent.kube) vs
lightkube. Each client runs in its own process against the test API server (another process): import,
get the Node, merge-patch its labels, watch it for a few events. VmRSS is read before the client's
imports (asyncio + aiohttp + yaml already loaded, as in the agent) and after the work.

lightkube is not a dependency: run with ``--lightkube-python PATH`` pointing at an interpreter that has
it (``python3 -m venv /tmp/lk && /tmp/lk/bin/pip install lightkube aiohttp pyyaml``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import PYTHON, REPO, table
from tests.support import free_port

PRELUDE = """
import asyncio, json, sys, gc
import aiohttp, yaml
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
server, token = sys.argv[1], sys.argv[2]
gc.collect()
before = rss()
"""

THIN = (
    PRELUDE
    + """
from nodeagent.kube.client import KubeClient
from nodeagent.kube.credentials import Credentials
from nodeagent.kube.resources import NODES
async def main():
    async with KubeClient(Credentials(server=server, token=lambda: token)) as c:
        await c.get(NODES, 'n1')
        await c.patch(NODES, 'n1', {'metadata': {'labels': {'nvidia.com/gpu.count': '8'}}})
        stream = c.watch_object(NODES, 'n1', timeout_s=2)
        await anext(stream)
        await stream.aclose()
asyncio.run(main())
gc.collect()
print(json.dumps({'before': before, 'after': rss()}))
"""
)

LIGHTKUBE = (
    PRELUDE
    + """
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType
async def main():
    cfg = KubeConfig.from_dict({'clusters': [{'name': 'c', 'cluster': {'server': server}}],
        'users': [{'name': 'u', 'user': {'token': token}}],
        'contexts': [{'name': 'x', 'context': {'cluster': 'c', 'user': 'u'}}], 'current-context': 'x'})
    c = AsyncClient(cfg)
    await c.get(Node, 'n1')
    await c.patch(Node, 'n1', {'metadata': {'labels': {'nvidia.com/gpu.count': '8'}}}, patch_type=PatchType.MERGE)
    async for _ in c.watch(Node, fields={'metadata.name': 'n1'}, resource_version='0'):
        break
    await c.close()
asyncio.run(main())
gc.collect()
print(json.dumps({'before': before, 'after': rss()}))
"""
)


def _run(python: str, code: str, server: str, token: str) -> dict[str, float] | str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [python, "-c", code, server, token], check=False, capture_output=True, text=True, env=env, timeout=60
    )
    if proc.returncode != 0:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(lightkube_python: str = "", repeats: int = 3) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp, "tokens.csv")
        tokens.write_text('tok,admin,u1,"system:masters"\n')
        port = free_port()
        server = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "nodeagent.testing.apiserver",
                "--port",
                str(port),
                "--token-file",
                str(tokens),
                "--node",
                "n1",
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        try:
            assert server.stdout is not None
            server.stdout.readline()
            url = f"http://127.0.0.1:{port}"
            rows: list[list[object]] = []
            clients = [("thin aiohttp client (nodeagent.kube)", PYTHON, THIN)]
            if lightkube_python:
                clients.append(("lightkube", lightkube_python, LIGHTKUBE))
            for label, python, code in clients:
                runs = [_run(python, code, url, "tok") for _ in range(repeats)]
                good = [r for r in runs if isinstance(r, dict)]
                if not good:
                    rows.append([label, "failed", str(runs[0])])
                    continue
                added = sorted(r["after"] - r["before"] for r in good)[len(good) // 2]
                rows.append([label, f"{added:.1f} MiB", f"{good[0]['before']:.1f} MiB"])
        finally:
            server.terminate()
            server.wait(timeout=10)
    return [
        table(
            "Kubernetes client: resident memory added (median of runs; get + merge-patch + watch a Node)",
            ["client", "RSS added", "RSS before (python + asyncio + aiohttp + yaml)"],
            rows,
        )
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--lightkube-python", default="")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    started = time.monotonic()
    for text in main(args.lightkube_python, args.repeats):
        print(text)
