"""Start `nodeagent run --simulate` for integration tests, and small HTTP helpers shared by them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import free_port, wait_until

NODE_NAME = "sim-node-7"


def get(url: str, headers: Mapping[str, str] | None = None, timeout: float = 5) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def answers(url: str) -> bool:
    try:
        return get(url, timeout=2)[0] == 200
    except OSError:
        return False


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def metrics(self, headers: Mapping[str, str] | None = None) -> bytes:
        status, body = get(f"{self.url}/metrics", headers)
        assert status == 200, body
        return body

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(get(f"{self.url}/status")[1])
        return doc


@contextmanager
def simulated_agent(tmp_path: Path, env: Mapping[str, str] | None = None) -> Iterator[Agent]:
    port = free_port()
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nodeagent",
                "run",
                "--simulate",
                "--root",
                str(tmp_path / "root"),
                "--listen",
                f"127.0.0.1:{port}",
                "--log-format",
                "json",
            ],
            env={**os.environ, "NODE_NAME": NODE_NAME, "NODEAGENT_METRICS__INTERVAL_S": "1", **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    agent = Agent(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_until(
            lambda: proc.poll() is not None or answers(f"{agent.url}/metrics"), timeout_s=60, what="agent /metrics"
        )
        assert proc.poll() is None, log.read_text()
        yield agent
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
