"""A busy port: `nodeagent run` says so in one plain line naming --listen and NODEAGENT_AGENT__LISTEN, exits 1
(issue 23 item 19)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from nodeagent.app import EXIT_LISTEN_FAILED


def test_busy_port_is_one_plain_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        done = subprocess.run(
            [
                *(sys.executable, "-m", "nodeagent", "run", "--simulate", "--root", str(tmp_path / "sim")),
                *("--only", "validation", "--listen", listen, "--log-format", "json"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == EXIT_LISTEN_FAILED == 1
    plain = [line for line in (done.stdout + done.stderr).splitlines() if not line.startswith("{")]
    assert plain == [
        f"nodeagent: cannot listen on {listen}: the address is already in use (another nodeagent, or "
        "dcgm-exporter, which also uses 9400?); choose another address with --listen HOST:PORT or "
        "NODEAGENT_AGENT__LISTEN=HOST:PORT (`make run PORT=9500`)"
    ]


def test_make_run_takes_the_port() -> None:
    makefile = Path(__file__).parents[2] / "Makefile"
    dry = subprocess.run(
        ["make", "-n", "-f", str(makefile), "run", "PORT=9500"],
        capture_output=True,
        text=True,
        check=True,
        cwd=makefile.parent,
    )
    assert "nodeagent run --simulate --listen 127.0.0.1:9500" in dry.stdout
    dry = subprocess.run(
        ["make", "-n", "-f", str(makefile), "run", "LISTEN=0.0.0.0:9600"],
        capture_output=True,
        text=True,
        check=True,
        cwd=makefile.parent,
    )
    assert "nodeagent run --simulate --listen 0.0.0.0:9600" in dry.stdout
    dry = subprocess.run(
        ["make", "-n", "-f", str(makefile), "run"], capture_output=True, text=True, check=True, cwd=makefile.parent
    )
    assert "--listen" not in dry.stdout  # unset: NODEAGENT_AGENT__LISTEN or the settings file decide
