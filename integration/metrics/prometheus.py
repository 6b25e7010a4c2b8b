"""One launcher for a real Prometheus (the Debian package) in a temporary directory, for the integration
tests that scrape simulated agents: it gets its own config, TSDB, port and log, and is stopped by its pid."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from integration.agent import answers
from tests.support import free_port, require, wait_until

HEADER = "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"


def job(name: str, target: str) -> str:
    """One scrape job for ``target`` (host:port)."""
    return f"  - job_name: {name}\n    static_configs:\n      - targets: ['{target}']\n"


@contextlib.contextmanager
def prometheus(tmp_path: Path, jobs: str) -> Iterator[str]:
    """Start Prometheus scraping ``jobs`` every second; yield its URL once it is ready."""
    binary = shutil.which("prometheus")
    require(binary is not None, "prometheus is not installed (Debian package prometheus)")
    assert binary is not None
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(HEADER + jobs)
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: proc.poll() is not None or answers(f"{url}/-/ready"), timeout_s=30, what="prometheus")
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
